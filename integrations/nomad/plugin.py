"""The ``nomad-driver-pypod`` executable: go-plugin's server side, as Nomad launches it.

1. Refuse to run without Nomad's magic cookie (go-plugin's message on stderr, exit 1).
2. Serve plaintext gRPC on a fresh unix socket: BasePlugin, Driver, plugin.GRPCController,
   plugin.GRPCStdio, plugin.GRPCBroker and grpc.health.v1 ("plugin" SERVING).
3. Print ``1|2|unix|PATH|grpc`` as the first line on stdout, then never write stdout again.
4. Live until GRPCController.Shutdown (exit within 2 s, tasks left running). SIGINT is ignored
   (a Ctrl-C on a foreground agent hits the whole process group) and broken stdout/stderr pipes
   (the agent died) are survived: the next agent reattaches to the same socket.

The server is grpc.aio: WaitTask and the streams (Fingerprint, TaskStats, TaskEvents, StreamStdio,
StartStream) wait on asyncio objects and hold no thread, so any number of tasks can each keep a
WaitTask pending. Blocking engine calls run in a bounded thread pool.
"""

from __future__ import annotations

import os
import signal
import sys

from . import APP_PROTOCOL_VERSION, CORE_PROTOCOL_VERSION, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE

NOT_A_PROGRAM = ("This binary is a plugin. These are not meant to be executed directly.\n"
                 "Please execute the program that consumes these plugins, which will\n"
                 "load any plugins automatically\n")


def _socket_path() -> str:
    import tempfile

    d = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or None
    fd, path = tempfile.mkstemp(prefix="plugin", dir=d)  # as go-plugin: a temp name, removed, bound
    os.close(fd)
    os.unlink(path)
    return path


def _handshake(path: str) -> None:
    line = f"{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{path}|grpc\n"
    os.write(1, line.encode())
    # go-plugin discards stdout after this line; an agent that dies leaves a broken pipe. Nothing
    # of ours may write there again, so stdout becomes /dev/null.
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    sys.stdout = open(os.devnull, "w")


async def _serve(log, argv_state_dir: str | None) -> int:
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    from .driver import BasePluginService, DriverService, Plugin
    from .proto import base_pb2_grpc, driver_pb2_grpc, goplugin_pb2, goplugin_pb2_grpc

    stopping = asyncio.Event()

    class Controller(goplugin_pb2_grpc.GRPCControllerServicer):
        async def Shutdown(self, request, context):
            log.info("shutdown requested by the host: exiting, tasks keep running")
            asyncio.get_running_loop().call_later(0.02, stopping.set)
            return goplugin_pb2.Empty()

    class Stdio(goplugin_pb2_grpc.GRPCStdioServicer):
        async def StreamStdio(self, request, context):
            await stopping.wait()  # Nomad discards plugin stdio: hold the stream, send nothing
            return
            yield  # an (empty) async generator

    class Broker(goplugin_pb2_grpc.GRPCBrokerServicer):
        async def StartStream(self, request_iterator, context):
            async for _ in request_iterator:  # Nomad's driver API brokers no connections
                pass
            return
            yield

    plugin = Plugin(log, state_dir=argv_state_dir)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    goplugin_pb2_grpc.add_GRPCControllerServicer_to_server(Controller(), server)
    goplugin_pb2_grpc.add_GRPCStdioServicer_to_server(Stdio(), server)
    goplugin_pb2_grpc.add_GRPCBrokerServicer_to_server(Broker(), server)
    base_pb2_grpc.add_BasePluginServicer_to_server(BasePluginService(plugin), server)
    driver_pb2_grpc.add_DriverServicer_to_server(DriverService(plugin), server)
    path = _socket_path()
    server.add_insecure_port("unix:" + path)
    await server.start()
    await health.set("plugin", health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    _handshake(path)
    log.info("plugin started", extra={"address": path, "pid": os.getpid()})
    plugin.stopping = stopping
    await stopping.wait()
    plugin.shutdown()
    await server.stop(0.3)
    try:
        os.unlink(path)
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        try:
            os.write(2, NOT_A_PROGRAM.encode())
        except OSError:
            pass
        return 1
    wanted = os.environ.get("PLUGIN_PROTOCOL_VERSIONS")
    if wanted and str(APP_PROTOCOL_VERSION) not in wanted.split(","):
        os.write(2, f"nomad-driver-pypod speaks plugin protocol {APP_PROTOCOL_VERSION}, the host asks for "
                    f"{wanted}\n".encode())
        return 1
    import argparse

    ap = argparse.ArgumentParser(prog="nomad-driver-pypod", description="pypod's Nomad task driver plugin")
    ap.add_argument("--log-level", default=os.environ.get("PYPOD_NOMAD_LOG_LEVEL", "info"),
                    help="trace, debug, info, warn or error (default info)")
    ap.add_argument("--state-dir", default=None,
                    help="where the plugin keeps its own files (default <pypod data dir>/nomad)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # go plugins eat interrupts too
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    from . import hclog

    log = hclog.setup(args.log_level)
    import asyncio

    try:
        rc = asyncio.run(_serve(log, args.state_dir))
    except Exception as e:  # one line in the agent's log rather than a traceback
        log.error(f"plugin failed: {e}", exc_info=True)
        rc = 1
    # Task threads (log copiers, monitors) are daemons and tasks outlive us: leave at once.
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
