"""The CRI streaming server: Exec, Attach and PortForward sessions behind one-time URLs.

``Exec``/``Attach``/``PortForward`` RPCs store their request under a random token and return
``http://<address>:<port>/<kind>/<token>``; the first connection to that URL consumes it (a
token lives one minute at most; at most 1000 wait). The connection upgrades to

- SPDY/3.1 (:mod:`.spdy`) with ``X-Stream-Protocol-Version`` ``v4.channel.k8s.io`` (down to
  ``channel.k8s.io``) for exec and attach, ``portforward.k8s.io`` for port-forward: what the
  kubelet, crictl and critest use by default;
- WebSocket (:mod:`.websocket`) with subprotocol ``v5.channel.k8s.io`` or ``v4.channel.k8s.io``
  (one byte of channel before each message: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize;
  v5's 255 closes a channel) for exec and attach, and ``SPDY/3.1+portforward.k8s.io`` (SPDY
  frames carried in binary messages) for port-forward: crictl's and critest's websocket modes.

remotecommand, as both transports carry it: the client opens an ``error`` stream, then
``stdin``, ``stdout``, ``stderr`` (not with a tty) and ``resize`` (JSON ``{"Width","Height"}``
lines, with a tty), as the request asked. The command's output goes out as it comes; when it
ends, the output streams are closed, the ``error`` stream gets a ``metav1.Status`` (Success, or
Failure/NonZeroExitCode with the code as the ExitCode cause) and the connection closes.

portforward.k8s.io: per connection the client opens an ``error`` and a ``data`` stream with the
same ``requestid`` and a ``port``; the server connects to ``localhost:port`` inside the pod's
network namespace and relays both ways; a failure is written to the ``error`` stream.

Exec runs the runtime's exec of the app (``Engine.enter_argv``) with pipes, or on a pty this
server allocates when a tty is asked (resizes set the pty's size and signal the runtime, which
passes it on). Attach connects to the app's conmon attach socket (``Engine.attach_socket``).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import struct
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator
from urllib.parse import unquote

from pypod.config import Config
from pypod.errors import PypodError

from . import spdy, websocket
from .service import EngineOwner

log = logging.getLogger("pypod.cri.streaming")

TOKEN_TTL = 60.0
MAX_PENDING = 1000
STREAM_CREATION_TIMEOUT = 30.0
OUTPUT_DRAIN = 2.0  # after the process exits, how long output may still trail (background children)
REMOTECOMMAND_SPDY = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
REMOTECOMMAND_WS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
PORTFORWARD = "portforward.k8s.io"
PORTFORWARD_WS = "SPDY/3.1+portforward.k8s.io"
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
ATTACH_STDOUT, ATTACH_STDERR = 2, 3  # conmon's attach markers


class PendingFull(PypodError):
    pass


@dataclass
class Request:
    kind: str
    params: dict[str, Any]
    expires: float = field(default_factory=lambda: time.monotonic() + TOKEN_TTL)


class StreamingServer(EngineOwner):
    def __init__(self, config: Config, address: str = "127.0.0.1", port: int = 0):
        super().__init__(config)
        self.address, self.port = address, port
        self._pending: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="stream")
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._connection, self.address, self.port, limit=1 << 16))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: BLE001 - reported to start()
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="streaming", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise PypodError(f"streaming server on {self.address}:{self.port}: {failure[0]}")

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop = None

    # -- tokens ---------------------------------------------------------------------------------
    def register(self, kind: str, **params: Any) -> str:
        """Store a request; returns its one-time URL."""
        now = time.monotonic()
        with self._lock:
            for tok in [t for t, r in self._pending.items() if r.expires < now]:
                del self._pending[tok]
            if len(self._pending) >= MAX_PENDING:
                raise PendingFull("too many streaming requests waiting for their client")
            token = secrets.token_urlsafe(6)
            while token in self._pending:
                token = secrets.token_urlsafe(6)
            self._pending[token] = Request(kind, params)
        return f"{self.base_url}/{kind}/{token}"

    def _take(self, kind: str, token: str) -> Request | None:
        with self._lock:
            req = self._pending.get(token)
            if req is None or req.kind != kind or req.expires < time.monotonic():
                return None
            del self._pending[token]
            return req

    async def _blocking(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args))

    # -- HTTP -----------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one broken session must not stop the server
            log.exception("streaming session failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return await _http_error(writer, 400, "bad request line")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        path = target.split("?", 1)[0]
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method not in ("GET", "POST") or len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            return await _http_error(writer, 404, "not found")
        req = self._take(parts[0], parts[1])
        if req is None:
            return await _http_error(writer, 404, "unknown or expired token")
        upgrade = ",".join(headers.get("upgrade", [])).lower()
        if "websocket" in upgrade:
            offered = _list(headers.get("sec-websocket-protocol", []))
            supported = [PORTFORWARD_WS] if req.kind == "portforward" else REMOTECOMMAND_WS
            proto = next((p for p in offered if p in supported), None)
            key = (headers.get("sec-websocket-key") or [""])[0]
            if proto is None or not key:
                return await _http_error(writer, 400, f"websocket: no supported subprotocol (offered "
                                                      f"{offered}, supported {supported})")
            writer.write(websocket.handshake_response(key, proto))
            await writer.drain()
            ws = websocket.Connection(reader, writer)
            if req.kind == "portforward":
                chan = websocket.MessageChannel(ws)
                await self._portforward(req, spdy.Session(chan, lambda s: None), chan)
            else:
                await self._remotecommand(req, WsIO(ws, proto, req.params))
            return
        if "spdy/3.1" not in upgrade:
            return await _http_error(writer, 400, "upgrade to SPDY/3.1 or websocket required")
        offered = _list(headers.get("x-stream-protocol-version", []))
        supported = [PORTFORWARD] if req.kind == "portforward" else REMOTECOMMAND_SPDY
        proto = next((p for p in offered if p in supported), None)
        if proto is None:
            return await _http_error(writer, 403, f"unable to upgrade: unable to negotiate protocol: client "
                                                  f"supports {offered}, server supports {supported}")
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                      f"X-Stream-Protocol-Version: {proto}\r\n\r\n").encode())
        await writer.drain()
        chan = spdy.TcpChannel(reader, writer)
        if req.kind == "portforward":
            await self._portforward(req, spdy.Session(chan, lambda s: None), chan)
        else:
            await self._remotecommand(req, await SpdyIO.open(chan, proto, req.params))

    # -- exec and attach ------------------------------------------------------------------------
    async def _remotecommand(self, req: Request, io: "IO | None") -> None:
        if io is None:
            return
        p = req.params
        rc: int | None = None
        error: str | None = None
        try:
            if req.kind == "exec":
                rc = await self._exec(p, io)
            else:
                await self._attach(p, io)
        except (PypodError, OSError) as e:
            error = str(e)
        except ConnectionError:
            error = "connection lost"
        try:
            await io.finish(rc, error, p.get("cmd"))
        except (ConnectionError, OSError):
            pass
        finally:
            await io.close()

    async def _exec(self, p: dict[str, Any], io: "IO") -> int:
        argv = await self._blocking(self.engine.enter_argv, p["pod"], p["app"], p["cmd"], p["tty"])
        spec_file = argv[argv.index("--process") + 1] if "--process" in argv else None
        try:
            if p["tty"]:
                return await self._exec_tty(argv, io)
            return await self._exec_pipes(argv, io, p)
        finally:
            if spec_file:
                try:
                    os.unlink(spec_file)
                except FileNotFoundError:
                    pass

    async def _exec_pipes(self, argv: list[str], io: "IO", p: dict[str, Any]) -> int:
        pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        proc = await asyncio.create_subprocess_exec(*argv, stdin=pipe if p["stdin"] else null,
                                                    stdout=pipe if p["stdout"] else null,
                                                    stderr=pipe if p["stderr"] else null,
                                                    start_new_session=True)

        async def pump_in() -> None:
            assert proc.stdin is not None
            try:
                async for chunk in io.stdin():
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            except (ConnectionError, BrokenPipeError):
                pass
            finally:
                proc.stdin.close()

        async def pump_out(stream, send) -> None:
            while chunk := await stream.read(65536):
                await send(chunk)

        return await self._supervise(proc, io, pump_in() if p["stdin"] else None,
                                     [pump_out(proc.stdout, io.stdout) if p["stdout"] else None,
                                      pump_out(proc.stderr, io.stderr) if p["stderr"] else None])

    async def _exec_tty(self, argv: list[str], io: "IO") -> int:
        master, slave = os.openpty()
        _set_size(master, 24, 80)
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave,
                                                        start_new_session=True)
        finally:
            os.close(slave)
        loop = asyncio.get_running_loop()
        os.set_blocking(master, False)
        out_q: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: every slave fd is closed
                data = b""
            if not data:
                loop.remove_reader(master)
            out_q.put_nowait(data)

        loop.add_reader(master, readable)

        async def pump_out() -> None:
            while chunk := await out_q.get():
                await io.stdout(chunk)

        async def pump_in() -> None:
            async for chunk in io.stdin():
                view = memoryview(chunk)
                while view:
                    try:
                        n = os.write(master, view)
                        view = view[n:]
                    except BlockingIOError:
                        await asyncio.sleep(0.01)

        async def resizes() -> None:
            async for width, height in io.resizes():
                _set_size(master, height, width)
                try:
                    proc.send_signal(signal.SIGWINCH)  # the runtime passes the new size on
                except ProcessLookupError:
                    return

        try:
            return await self._supervise(proc, io, pump_in(), [pump_out()], resizes())
        finally:
            loop.remove_reader(master)
            os.close(master)

    async def _supervise(self, proc, io: "IO", stdin_task, output_tasks, extra=None) -> int:
        """Run the pumps until the process exits (and its output is drained, or has trailed for
        OUTPUT_DRAIN seconds); if the client goes away first, stop the process."""
        side = [asyncio.ensure_future(t) for t in (stdin_task, extra) if t is not None]
        outs = [asyncio.ensure_future(t) for t in output_tasks if t is not None]
        waiter = asyncio.ensure_future(proc.wait())
        gone = asyncio.ensure_future(io.gone())
        try:
            done, _ = await asyncio.wait([waiter, gone], return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:  # the client left: the runtime passes SIGTERM on, then SIGKILL
                _signal(proc, signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), 2)
                except asyncio.TimeoutError:
                    _signal(proc, signal.SIGKILL)
                    await waiter
                raise ConnectionError("client went away")
            if outs:
                await asyncio.wait(outs, timeout=OUTPUT_DRAIN)
            return waiter.result()
        finally:
            for t in side + outs + [gone]:
                t.cancel()
            await asyncio.gather(*side, *outs, gone, return_exceptions=True)

    async def _attach(self, p: dict[str, Any], io: "IO") -> None:
        path = await self._blocking(self.engine.attach_socket, p["pod"], p["app"])
        sock = await self._blocking(_connect_seqpacket, path)
        loop = asyncio.get_running_loop()

        async def pump_out() -> None:
            while True:
                msg = await loop.sock_recv(sock, 65536 + 1)
                if not msg:
                    return
                if msg[0] == ATTACH_STDOUT and p["stdout"]:
                    await io.stdout(msg[1:])
                elif msg[0] == ATTACH_STDERR and p["stderr"]:
                    await io.stderr(msg[1:])

        async def pump_in() -> None:
            async for chunk in io.stdin():
                await loop.sock_sendall(sock, chunk)
            sock.shutdown(socket.SHUT_WR)  # conmon closes the app's stdin (stdin_once)

        async def resizes() -> None:
            async for width, height in io.resizes():
                await self._blocking(self.engine.resize, p["pod"], p["app"], height, width)

        outs = asyncio.ensure_future(pump_out())
        side = [asyncio.ensure_future(t) for t in ((pump_in() if p["stdin"] else None),
                                                   (resizes() if p["tty"] else None)) if t is not None]
        gone = asyncio.ensure_future(io.gone())
        try:
            done, _ = await asyncio.wait([outs, gone], return_when=asyncio.FIRST_COMPLETED)
            if outs in done:
                outs.result()
            else:
                raise ConnectionError("client went away")
        finally:
            for t in side + [outs, gone]:
                t.cancel()
            await asyncio.gather(*side, outs, gone, return_exceptions=True)
            sock.close()

    # -- port-forward ---------------------------------------------------------------------------
    async def _portforward(self, req: Request, session: spdy.Session, chan) -> None:
        pairs: dict[str, dict[str, spdy.Stream]] = {}
        tasks: list[asyncio.Task] = []

        def on_stream(s: spdy.Stream) -> None:
            kind = s.headers.get("streamtype", "")
            rid = s.headers.get("requestid")
            if rid is None:  # old clients: the data stream follows its error stream
                rid = str(s.id if kind == "error" else s.id - 2)
            pair = pairs.setdefault(rid, {})
            pair[kind] = s
            if "error" in pair and "data" in pair:
                del pairs[rid]
                tasks.append(asyncio.ensure_future(self._forward(req, pair["error"], pair["data"])))

        session.on_stream = on_stream
        try:
            await session.serve()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()

    async def _forward(self, req: Request, err: spdy.Stream, data: spdy.Stream) -> None:
        pod = req.params["pod"]
        try:
            port = int(data.headers.get("port", ""))
        except ValueError:
            await _fail_pair(err, data, f"invalid port {data.headers.get('port')!r}")
            return
        try:
            netns = await self._blocking(self.engine.netns, pod)
            sock = await self._blocking(_connect_in, netns, port)
        except (PypodError, OSError) as e:
            await _fail_pair(err, data, f"error forwarding port {port} to pod {pod}: {e}")
            return
        reader, writer = await asyncio.open_connection(sock=sock)

        async def to_pod() -> None:
            try:
                while chunk := await data.read():
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                pass

        async def from_pod() -> None:
            try:
                while chunk := await reader.read(65536):
                    await data.write(chunk)
            except (ConnectionError, OSError):
                pass
            try:
                await data.close()
            except (ConnectionError, OSError):
                pass

        try:
            await asyncio.gather(to_pod(), from_pod())
        finally:
            writer.close()
            try:
                await err.close()
            except (ConnectionError, OSError):
                pass


# -- the two transports of remotecommand ----------------------------------------------------------


class IO:
    """One remotecommand session, whatever carries it."""

    async def stdin(self) -> AsyncIterator[bytes]:  # pragma: no cover - interface
        if False:
            yield b""

    async def resizes(self) -> AsyncIterator[tuple[int, int]]:  # pragma: no cover - interface
        if False:
            yield (0, 0)

    async def stdout(self, data: bytes) -> None: ...

    async def stderr(self, data: bytes) -> None: ...

    async def gone(self) -> None:
        """Returns when the client has gone."""

    async def finish(self, rc: int | None, error: str | None, cmd: list[str] | None) -> None: ...

    async def close(self) -> None: ...


def status_json(rc: int | None, error: str | None, cmd: list[str] | None) -> bytes:
    """The ``metav1.Status`` remotecommand v4 ends with."""
    if error is None and not rc:  # exec exited 0, or attach ended
        return b'{"metadata":{},"status":"Success"}'
    if error is None:
        st = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
              "message": f"command terminated with non-zero exit code: error executing command {cmd}, "
                         f"exit code {rc}",
              "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}
    else:
        st = {"metadata": {}, "status": "Failure", "reason": "InternalError", "message": error or "failed"}
    return json.dumps(st, separators=(",", ":")).encode()


def _resize_lines(buf: bytearray, data: bytes):
    buf += data
    while True:
        i = buf.find(b"\n")
        if i < 0:
            # a JSON object without the newline is complete as well
            try:
                size = json.loads(bytes(buf))
            except ValueError:
                return
            del buf[:]
        else:
            line = bytes(buf[:i])
            del buf[:i + 1]
            try:
                size = json.loads(line) if line.strip() else None
            except ValueError:
                continue
        if isinstance(size, dict):
            w, h = int(size.get("Width") or size.get("width") or 0), int(size.get("Height") or size.get("height") or 0)
            if w > 0 and h > 0:
                yield w, h


class SpdyIO(IO):
    def __init__(self, session: spdy.Session, proto: str, streams: dict[str, spdy.Stream], serving: asyncio.Task):
        self.session, self.proto, self.streams, self.serving = session, proto, streams, serving

    @classmethod
    async def open(cls, chan: spdy.TcpChannel, proto: str, p: dict[str, Any]) -> "SpdyIO | None":
        expected = {"error"}
        if p.get("stdin"):
            expected.add("stdin")
        if p.get("stdout"):
            expected.add("stdout")
        if p.get("stderr") and not p.get("tty"):
            expected.add("stderr")
        if p.get("tty") and proto != "v2.channel.k8s.io" and proto != "channel.k8s.io":
            expected.add("resize")
        streams: dict[str, spdy.Stream] = {}
        complete = asyncio.Event()

        def on_stream(s: spdy.Stream) -> None:
            streams[s.headers.get("streamtype", "")] = s
            if expected <= set(streams):
                complete.set()

        session = spdy.Session(chan, on_stream)
        serving = asyncio.ensure_future(session.serve())
        waiter = asyncio.ensure_future(complete.wait())
        done, _ = await asyncio.wait([waiter, serving], timeout=STREAM_CREATION_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            log.warning("streams %s expected, only %s created", sorted(expected), sorted(streams))
            await session.close()
            serving.cancel()
            return None
        return cls(session, proto, streams, serving)

    async def stdin(self):
        s = self.streams.get("stdin")
        if s is None:
            return
        while chunk := await s.read():
            yield chunk

    async def resizes(self):
        s = self.streams.get("resize")
        if s is None:
            return
        buf = bytearray()
        while chunk := await s.read():
            for size in _resize_lines(buf, chunk):
                yield size

    async def stdout(self, data: bytes) -> None:
        await self.streams["stdout"].write(data)

    async def stderr(self, data: bytes) -> None:
        s = self.streams.get("stderr") or self.streams["stdout"]
        await s.write(data)

    async def gone(self) -> None:
        await asyncio.shield(self.serving)

    async def finish(self, rc, error, cmd) -> None:
        for name in ("stdout", "stderr"):
            if name in self.streams:
                await self.streams[name].close()
        err = self.streams["error"]
        if self.proto == "v4.channel.k8s.io":
            await err.write(status_json(rc, error, cmd))
        elif error is not None or rc:  # v1-v3: a plain-text error
            msg = error or f"command terminated with non-zero exit code: exit code {rc}"
            await err.write(msg.encode())
        await err.close()

    async def close(self) -> None:
        await self.session.close()  # lets the serving task see the peer's EOF
        self.serving.cancel()
        try:
            await self.serving
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass


class WsIO(IO):
    """remotecommand over WebSocket channels (v4 and v5)."""

    def __init__(self, ws: websocket.Connection, proto: str, p: dict[str, Any]):
        self.ws, self.proto = ws, proto
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue()
        self._resize: asyncio.Queue[bytes] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while (msg := await self.ws.recv()) is not None:
                _, data = msg
                if not data:
                    continue
                ch, body = data[0], data[1:]
                if ch == STDIN:
                    self._stdin.put_nowait(body)
                elif ch == RESIZE:
                    self._resize.put_nowait(body)
                elif ch == CLOSE and body[:1] == bytes([STDIN]):
                    self._stdin.put_nowait(b"")
        except (websocket.WebSocketError, ConnectionError, OSError):
            pass
        finally:
            self._stdin.put_nowait(b"")
            self._resize.put_nowait(b"")

    async def stdin(self):
        while chunk := await self._stdin.get():
            yield chunk

    async def resizes(self):
        buf = bytearray()
        while chunk := await self._resize.get():
            for size in _resize_lines(buf, chunk):
                yield size

    async def stdout(self, data: bytes) -> None:
        await self.ws.send_binary(bytes([STDOUT]) + data)

    async def stderr(self, data: bytes) -> None:
        await self.ws.send_binary(bytes([STDERR]) + data)

    async def gone(self) -> None:
        await asyncio.shield(self._reader)

    async def finish(self, rc, error, cmd) -> None:
        await self.ws.send_binary(bytes([ERROR]) + status_json(rc, error, cmd))

    async def close(self) -> None:
        await self.ws.close()  # the close handshake: the reader sees the peer's close frame
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001
            self._reader.cancel()
        self.ws.writer.close()


# -- helpers --------------------------------------------------------------------------------------


def _list(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


async def _http_error(writer: asyncio.StreamWriter, code: int, message: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(code, "Error")
    body = (message + "\n").encode()
    writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)
    await writer.drain()


async def _fail_pair(err: spdy.Stream, data: spdy.Stream, message: str) -> None:
    try:
        await err.write(message.encode())
        await err.close()
        await data.close()
    except (ConnectionError, OSError):
        pass


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _signal(proc, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _connect_seqpacket(path: str) -> socket.socket:
    """conmon's attach socket (its path may exceed sun_path: connect through /proc/self/fd)."""
    dfd = os.open(os.path.dirname(path), os.O_PATH)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(10)
        sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    finally:
        os.close(dfd)
    return sock


def _connect_in(netns: str | None, port: int) -> socket.socket:
    """A TCP connection to localhost:port inside ``netns`` (None: the host's); a socket keeps
    the namespace it was made in."""
    def connect() -> socket.socket:
        last: OSError | None = None
        for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect((addr, port))
                s.setblocking(False)
                return s
            except OSError as e:
                s.close()
                last = e
        assert last is not None
        raise last

    if netns is None:
        return connect()
    from pypod.network import netns as netns_mod

    return netns_mod.run_in(netns, connect)
