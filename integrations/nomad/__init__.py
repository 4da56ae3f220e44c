"""nomad-driver-pypod: a Nomad task driver plugin (hashicorp/go-plugin over gRPC) that runs
each Nomad task as a pypod pod through the engine API (:class:`pypod.pods.engine.Engine`).

Modules: :mod:`.plugin` (the executable: cookie check, handshake, go-plugin's own services),
:mod:`.hclog` (stderr logs in hclog's JSON form), :mod:`.schema` (hclspec schemas, msgpack
configs), :mod:`.driver` (BasePlugin and Driver), :mod:`.tasks` (one pod per task, the log
copier, driver_state), :mod:`.pull` (image pulls in a child process, killed at the pull timeout). Stubs of the project's own .proto files live in :mod:`.proto`.

This module stays cheap to import: Nomad launches the plugin several times at agent start.
"""

PLUGIN_NAME = "pypod"
PLUGIN_VERSION = "0.1.0"
API_VERSION = "v0.1.0"
MAGIC_COOKIE_KEY = "NOMAD_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE_VALUE = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255"
CORE_PROTOCOL_VERSION = 1
APP_PROTOCOL_VERSION = 2
