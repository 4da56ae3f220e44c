"""pypod: a pod-native, daemonless container engine in the line of CoreOS rkt.

The engine is an in-process library; the CLI and the orchestrator drivers are thin layers over it.
Submodules are imported lazily by their users so that the CLI's hot paths stay cheap.
"""

__version__ = "0.1.0"
