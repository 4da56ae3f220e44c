"""ExecTaskStreaming (``nomad alloc exec``): a command run in the task's app through the engine's
interactive exec (:meth:`Engine.enter_argv`), its stdio bridged to the gRPC stream.

Request stream: ``setup`` first, then ``stdin{data}``, ``stdin{close}``, ``tty_size`` or empty
heartbeats. Response stream: ``stdout``/``stderr`` chunks, their ``close``, then ``exited`` with the
result. With ``tty`` the runtime gets a pseudo-terminal as its stdio (and as its controlling
terminal, through util-linux ``setsid --ctty``): a resize of our side reaches it as SIGWINCH.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import termios

import grpc

from .proto import driver_pb2 as D


def _winsize(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", max(height, 1), max(width, 1), 0, 0))


def _out(stream: str, data: bytes = b"", close: bool = False) -> D.ExecTaskStreamingResponse:
    op = D.ExecTaskStreamingIOOperation(data=data, close=close)
    return D.ExecTaskStreamingResponse(**{stream: op})


async def stream_exec(svc, request_iterator, context):
    p = svc.plugin
    it = request_iterator.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        return
    if not first.HasField("setup"):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message should always be setup")
    setup = first.setup
    t = p.tasks.get(setup.task_id)
    if t is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, "task not found for given id")
    if not setup.command:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "command: empty")
    try:
        argv = await p.run(p.engine.enter_argv, t.state.uuid, t.state.app, list(setup.command), setup.tty)
    except Exception as e:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"exec: {e}")
    loop = asyncio.get_running_loop()
    out_q: asyncio.Queue = asyncio.Queue()
    if setup.tty:
        master, slave = os.openpty()
        _winsize(master, 24, 80)
        proc = await asyncio.create_subprocess_exec("setsid", "--ctty", *argv, stdin=slave, stdout=slave,
                                                    stderr=slave, start_new_session=False)
        os.close(slave)
        os.set_blocking(master, False)

        def readable():
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: every holder of the slave side is gone
                data = b""
            if not data:
                loop.remove_reader(master)
            out_q.put_nowait(("stdout", data))

        loop.add_reader(master, readable)
        streams = {"stdout"}

        async def write_stdin(data: bytes) -> None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(master, view):]
                except BlockingIOError:
                    await asyncio.sleep(0.01)

        async def close_stdin() -> None:
            await write_stdin(b"\x04")  # EOF on a terminal: ^D

        def resize(h: int, w: int) -> None:
            _winsize(master, h, w)
    else:
        master = None
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        streams = {"stdout", "stderr"}

        async def pump(name: str, reader: asyncio.StreamReader) -> None:
            while True:
                data = await reader.read(65536)
                out_q.put_nowait((name, data))
                if not data:
                    return

        pumps = [asyncio.create_task(pump("stdout", proc.stdout)), asyncio.create_task(pump("stderr", proc.stderr))]

        async def write_stdin(data: bytes) -> None:
            try:
                proc.stdin.write(data)
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass

        async def close_stdin() -> None:
            try:
                proc.stdin.close()
            except OSError:
                pass

        def resize(h: int, w: int) -> None:
            pass

    async def read_requests() -> None:
        try:
            async for req in it:
                if req.HasField("stdin"):
                    if req.stdin.data:
                        await write_stdin(req.stdin.data)
                    if req.stdin.close:
                        await close_stdin()
                if req.HasField("tty_size"):
                    resize(req.tty_size.height, req.tty_size.width)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass

    reader = asyncio.create_task(read_requests())
    try:
        open_streams = set(streams)
        while open_streams:
            name, data = await out_q.get()
            if data:
                yield _out(name, data)
            else:
                open_streams.discard(name)
                yield _out(name, close=True)
        code = await proc.wait()
        if setup.tty:
            yield _out("stderr", close=True)
        yield D.ExecTaskStreamingResponse(exited=True, result=D.ExitResult(exit_code=code))
    finally:
        reader.cancel()
        if master is not None:
            loop.remove_reader(master)
            os.close(master)
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()
