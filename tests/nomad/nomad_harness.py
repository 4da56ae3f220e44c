"""A stand-in for the Nomad client's side of a task driver plugin, written from
shared/reference/nomad.md (§1, §4.3, §5.6): it launches ``nomad-driver-pypod`` as go-plugin does
(cookie, protocol env, first stdout line parsed with go-plugin's rules, stdout then discarded,
stderr kept as the agent's log), talks plaintext gRPC on the announced socket, encodes configs as
cty-msgpack maps with every schema key, and builds alloc dirs with logmon-style FIFO readers.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import msgpack

from pypod.nomad.proto import base_pb2, base_pb2_grpc, driver_pb2, driver_pb2_grpc, goplugin_pb2, goplugin_pb2_grpc

COOKIE = ("NOMAD_PLUGIN_MAGIC_COOKIE", "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255")
PLUGIN = str(Path(sys.executable).parent / "nomad-driver-pypod")


def plugin_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({COOKIE[0]: COOKIE[1], "PLUGIN_MIN_PORT": "10000", "PLUGIN_MAX_PORT": "25000",
                "PLUGIN_PROTOCOL_VERSIONS": "2"})
    env.update(extra)
    return env


def parse_handshake(line: str) -> str:
    """go-plugin's checks on the first stdout line; returns the unix socket path."""
    parts = line.strip().split("|")
    assert len(parts) >= 4, f"Unrecognized remote plugin message: {line!r}"
    assert parts[0] == "1", f"core protocol {parts[0]!r}"
    assert parts[1] == "2", f"Incompatible API version {parts[1]!r}"
    assert parts[2] == "unix", parts[2]
    assert len(parts) >= 5 and parts[4] == "grpc", f"protocol {parts[4:5]!r} (netrpc is refused)"
    assert len(parts) < 6 or len(parts[5]) <= 50, "a 6th field > 50 chars is read as a server certificate"
    return parts[3]


class Plugin:
    """One launch of the plugin process."""

    def __init__(self, exe: str = PLUGIN, env: dict[str, str] | None = None, timeout: float = 60,
                 drain: bool = True):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([exe], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env or plugin_env(), start_new_session=True)
        self.stderr_lines: list[str] = []
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "no handshake line within the start timeout"
        self.line = self.proc.stdout.readline().decode()
        self.handshake_time = time.monotonic() - self.t0
        self.address = parse_handshake(self.line)
        if drain:  # else the caller closes the pipes (an agent that died)
            threading.Thread(target=self._drain, args=(self.proc.stdout, None), daemon=True).start()
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr_lines), daemon=True).start()
        self.channel = grpc.insecure_channel("unix:" + self.address)
        self.base = base_pb2_grpc.BasePluginStub(self.channel)
        self.driver = driver_pb2_grpc.DriverStub(self.channel)
        self.controller = goplugin_pb2_grpc.GRPCControllerStub(self.channel)
        self.stdio = goplugin_pb2_grpc.GRPCStdioStub(self.channel)
        self.broker = goplugin_pb2_grpc.GRPCBrokerStub(self.channel)

    @staticmethod
    def _drain(f, keep: list[str] | None) -> None:
        for line in iter(f.readline, b""):
            if keep is not None:
                keep.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> list[dict]:
        return [json.loads(x) for x in self.stderr_lines if x.startswith("{")]

    def shutdown(self) -> float:
        """GRPCController.Shutdown, as go-plugin's Kill(): wait 2 s, then SIGKILL. Returns the
        time to exit (AssertionError if the plugin needed the SIGKILL)."""
        t = time.monotonic()
        try:
            self.controller.Shutdown(goplugin_pb2.Empty(), timeout=2)
        except grpc.RpcError:
            pass
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("plugin failed to exit gracefully within 2 s")
        finally:
            self.channel.close()
        return time.monotonic() - t

    def kill(self) -> None:
        """SIGKILL (a crash, or go-plugin's kill after the 2 s); the socket file stays behind, as
        it would on a host: the test removes it to leave the machine clean."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.channel.close()
        try:
            os.unlink(self.address)
        except OSError:
            pass

    def set_config(self, values: dict | None = None, nomad: bool = True) -> None:
        spec = self.base.ConfigSchema(base_pb2.ConfigSchemaRequest()).spec
        req = base_pb2.SetConfigRequest(msgpack_config=encode(spec, values or {}), plugin_api_version="v0.1.0")
        if nomad:
            req.nomad_config.driver.ClientMinPort = 14000
            req.nomad_config.driver.ClientMaxPort = 14512
        self.base.SetConfig(req, timeout=30)


def encode(spec, values: dict) -> bytes:
    """cty-msgpack as Nomad sends it: a map with every attribute of the schema's root object,
    None for those not set."""
    keys = list(spec.object.attributes)
    unknown = set(values) - set(keys)
    doc = {k: values.get(k) for k in sorted(keys)}
    doc.update({k: values[k] for k in unknown})  # tests of unknown fields
    return msgpack.packb(doc, use_bin_type=True)


class AllocDir:
    """``<root>/alloc/{data,logs,tmp}`` and ``<root>/<task>/{local,secrets,tmp}`` with the two
    FIFOs of each task, read as logmon reads them: kept open, appended to ``<task>.std*.0``."""

    def __init__(self, root: Path, alloc_id: str = "0c9f4b2a-1111-2222-3333-444455556666"):
        self.root = root
        self.alloc_id = alloc_id
        for d in ("data", "logs", "tmp"):
            (root / "alloc" / d).mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def task(self, name: str) -> tuple[str, str]:
        for d in ("local", "secrets", "tmp"):
            (self.root / name / d).mkdir(parents=True, exist_ok=True)
        paths = []
        for stream in ("stdout", "stderr"):
            fifo = self.root / "alloc" / "logs" / f".{name}.{stream}.fifo"
            if not fifo.exists():
                os.mkfifo(fifo)
                t = threading.Thread(target=self._logmon, args=(fifo, self.log_file(name, stream)), daemon=True)
                t.start()
                self._threads.append(t)
            paths.append(str(fifo))
        return paths[0], paths[1]

    def log_file(self, name: str, stream: str) -> Path:
        return self.root / "alloc" / "logs" / f"{name}.{stream}.0"

    def read_log(self, name: str, stream: str = "stdout") -> str:
        p = self.log_file(name, stream)
        return p.read_text() if p.exists() else ""

    def _logmon(self, fifo: Path, out: Path) -> None:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with open(out, "ab") as f:
                while not self._stop.is_set():
                    r, _, _ = select.select([fd], [], [], 0.05)
                    if not r:
                        continue
                    data = os.read(fd, 65536)
                    if data:
                        f.write(data)
                        f.flush()
                    else:
                        time.sleep(0.05)  # no writer (yet, or between two): keep the read side open
        finally:
            os.close(fd)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)


_seq = [0]


def task_config(alloc: AllocDir, name: str, driver_spec, config: dict, *, resources: bool = True,
                **fields) -> driver_pb2.TaskConfig:
    """A TaskConfig as the client's task runner builds it (IMAGE isolation env, alloc dir, FIFOs)."""
    _seq[0] += 1
    stdout, stderr = alloc.task(name)
    env = {"NOMAD_ALLOC_ID": alloc.alloc_id, "NOMAD_TASK_NAME": name, "NOMAD_ALLOC_DIR": "/alloc",
           "NOMAD_TASK_DIR": "/local", "NOMAD_SECRETS_DIR": "/secrets", "NOMAD_JOB_NAME": "job"}
    cfg = driver_pb2.TaskConfig(
        id=f"{alloc.alloc_id}/{name}/{os.getpid() % 10000:04d}{_seq[0]:04d}", name=name,
        msgpack_driver_config=encode(driver_spec, config), env=env, alloc_dir=str(alloc.root),
        stdout_path=stdout, stderr_path=stderr, task_group_name="group", job_name="job", job_id="job",
        alloc_id=alloc.alloc_id, namespace="default", node_name="node", node_id="node-id", **fields)
    if resources:
        cfg.resources.allocated_resources.cpu.cpu_shares = 100
        cfg.resources.allocated_resources.memory.memory_mb = 64
        cfg.resources.linux_resources.cpu_shares = 100
        cfg.resources.linux_resources.memory_limit_bytes = 64 << 20
    return cfg
