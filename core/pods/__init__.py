"""Pods: the manifest (``pypod.pods.manifest``), rkt's on-disk state machine
(``pypod.pods.state``) and, with ``pypod.events``, the event log.

Nothing is imported here: ``pypod list`` and ``pypod status`` import only the modules they use.
"""
