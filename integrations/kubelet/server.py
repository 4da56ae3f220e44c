"""``pypod-cri``: serve runtime.v1 RuntimeService and ImageService on a unix socket.

    pypod-cri [--listen /run/pypod/cri.sock] [--dir DATA_DIR] [--config-dir DIR]
              [--streaming-address 127.0.0.1] [--streaming-port 0] [--network default]

Settings come from ``[cri]`` in pypod.toml (:mod:`pypod.kubelet.config`), then these flags. The
engine runs in this process; pods outlive it (conmon monitors every container), and a new
``pypod-cri`` finds them all again. Stop it with SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import sys
import threading
from concurrent import futures

from pypod import config as config_mod
from pypod.errors import PypodError

from .config import CriConfig

MAX_MESSAGE = 16 << 20  # what the kubelet's client accepts
WORKERS = 32


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pypod-cri", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", help="unix socket path (default /run/pypod/cri.sock)")
    ap.add_argument("--dir", help="pypod data dir (as pypod --dir)")
    ap.add_argument("--config-dir", help="pypod config dir (as pypod --config-dir)")
    ap.add_argument("--streaming-address", help="address of the exec/attach/port-forward server (127.0.0.1)")
    ap.add_argument("--streaming-port", type=int, help="its port (0: any free port)")
    ap.add_argument("--network", help="the pypod network sandboxes attach to (default: default)")
    ap.add_argument("--log-level", default=os.environ.get("PYPOD_CRI_LOG_LEVEL", "info"),
                    choices=["debug", "info", "warning", "error"])
    return ap


def _unlink_stale(path: str) -> None:
    """Remove a socket left by a previous pypod-cri; refuse when one is still serving there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise PypodError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise PypodError(f"another server listens on {path}")


class Server:
    """pypod-cri in one object: start() then wait(); stop() from anywhere."""

    def __init__(self, config: config_mod.Config, cri: CriConfig):
        import grpc

        from .images import ImageService
        from .proto import cri_pb2_grpc as pb_grpc
        from .runtime import RuntimeService
        from .streaming import StreamingServer

        self.config, self.cri = config, cri
        self.streaming = StreamingServer(config, cri.streaming_address, cri.streaming_port)
        self.runtime = RuntimeService(config, cri, self.streaming)
        self.images = ImageService(config)
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="cri"),
                                options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                         ("grpc.max_send_message_length", MAX_MESSAGE)])
        pb_grpc.add_RuntimeServiceServicer_to_server(self.runtime, self.grpc)
        pb_grpc.add_ImageServiceServicer_to_server(self.images, self.grpc)
        self._stopped = threading.Event()

    def start(self) -> None:
        path = self.cri.listen
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        _unlink_stale(path)
        self.streaming.start()
        old = os.umask(0o117)  # the socket: root and the pypod group (srw-rw----)
        try:
            if not self.grpc.add_insecure_port("unix:" + path):
                raise PypodError(f"cannot listen on {path}")
            self.grpc.start()
        finally:
            os.umask(old)
        logging.getLogger("pypod.cri").info("serving runtime.v1 on unix://%s, streaming on %s", path,
                                            self.streaming.base_url)

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.grpc.stop(grace).wait(grace + 1)
        self.streaming.stop()
        try:
            os.unlink(self.cri.listen)
        except FileNotFoundError:
            pass

    def wait(self) -> None:
        self._stopped.wait()


def _reaper(stop: threading.Event) -> None:
    """conmon daemonises: as a subreaper this process adopts the conmons it starts; reap them when
    they exit (the host's PID 1 may not)."""
    from pypod.stage1 import conmon

    while not stop.wait(1.0):
        conmon.reap_adopted()


def main(argv: list[str] | None = None) -> int:
    # The engine forks (a child that unshares a user namespace for idmapped mounts): with gRPC's
    # fork support on, its atfork handlers restart gRPC's threads in the child, and a threaded
    # process cannot unshare CLONE_NEWUSER. Nothing here uses gRPC in a child. Before the import.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    a = _parser().parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s pypod-cri %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore", "asyncio"):  # one line per request and per TCP step
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = config_mod.load(a.dir, a.config_dir)
        cri = CriConfig.from_table(config.cri)
        for key in ("listen", "streaming_address", "streaming_port", "network"):
            if getattr(a, key) is not None:
                setattr(cri, key, getattr(a, key))
        if os.geteuid() != 0:
            raise PypodError("pypod-cri runs pods: it needs root")
        from pypod.stage1 import conmon

        conmon.become_subreaper()
        server = Server(config, cri)
        server.start()
    except PypodError as e:
        print(f"pypod-cri: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    stop = threading.Event()

    def on_signal(signum, frame):
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_reaper, args=(stop,), daemon=True, name="reaper").start()
    server.wait()
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
