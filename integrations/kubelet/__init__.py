"""pypod-cri: the Kubernetes Container Runtime Interface (runtime.v1) over pypod's engine.

A kubelet (or crictl, or critest) talks gRPC to ``pypod-cri`` on a unix socket. The shim is a
translator, as the design brief wants every driver to be: a pod sandbox is a mutable pypod pod
(its infra process owns the namespaces), a container is an app added to it, and every call is
one or two calls of :class:`pypod.pods.engine.Engine`. It keeps no state of its own: CRI ids are
derived from pod UUIDs and app names (:mod:`.ids`), CRI metadata rides in the pod manifest's
annotations (:mod:`.mapping`), so ``pypod-cri`` can be restarted (or crash) at any time and finds
every sandbox and container again on the disk, as ``pypod list`` does.

Modules:

- :mod:`.config`     settings (flags, ``[cri]`` in pypod.toml)
- :mod:`.ids`        CRI ids <-> pod UUIDs and app names
- :mod:`.mapping`    CRI messages <-> pod manifests and engine results
- :mod:`.runtime`    ``runtime.v1.RuntimeService``
- :mod:`.images`     ``runtime.v1.ImageService``
- :mod:`.streaming`  the HTTP streaming server for Exec, Attach and PortForward (SPDY/3.1 and
                     WebSocket, :mod:`.spdy`, :mod:`.websocket`)
- :mod:`.server`     the ``pypod-cri`` entry point
"""
