"""WebSocket (RFC 6455), server side, on asyncio streams: just what the CRI streaming paths need.

The handshake answers ``Sec-WebSocket-Key`` with ``base64(sha1(key + GUID))`` and one of the
offered subprotocols. Frames: ``FIN|RSV|opcode``, ``MASK|len7`` (126: 16-bit length follows,
127: 64-bit), a 4-byte mask from clients (which must mask), the payload. Ping is answered with
pong; a close is answered with a close, after which :meth:`Connection.recv` returns None.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL_CLOSURE, PROTOCOL_ERROR, TOO_BIG = 1000, 1002, 1009
MAX_MESSAGE = 16 << 20


class WebSocketError(Exception):
    pass


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key.strip() + GUID).encode()).digest()).decode()


def handshake_response(key: str, protocol: str | None) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(key)}"]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._wlock = asyncio.Lock()
        self.closed = False
        self._close_sent = False

    async def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if b0 & 0x70:
            raise WebSocketError("reserved bits set (no extension was negotiated)")
        if n == 126:
            (n,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
        if n > MAX_MESSAGE:
            raise WebSocketError("frame too large")
        if not masked:
            raise WebSocketError("client frames must be masked")
        mask = await self.reader.readexactly(4)
        data = await self.reader.readexactly(n) if n else b""
        if data:
            m = int.from_bytes(mask * (len(data) // 4 + 1), "little")
            data = (int.from_bytes(data, "little") ^ (m & ((1 << (8 * len(data))) - 1))).to_bytes(len(data), "little")
        return fin, opcode, data

    async def recv(self) -> tuple[int, bytes] | None:
        """The next data message as (opcode, payload); None when the peer closed."""
        parts: list[bytes] = []
        first = None
        while not self.closed:
            try:
                fin, opcode, data = await self._frame()
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                self.closed = True
                return None
            if opcode == PING:
                await self.send(PONG, data)
            elif opcode == PONG:
                pass
            elif opcode == CLOSE:
                await self.close(NORMAL_CLOSURE)
                self.closed = True
                return None
            elif opcode in (TEXT, BINARY, CONT):
                if opcode != CONT:
                    first = opcode
                elif first is None:
                    raise WebSocketError("continuation without a message")
                parts.append(data)
                if sum(map(len, parts)) > MAX_MESSAGE:
                    raise WebSocketError("message too large")
                if fin:
                    return first, b"".join(parts)
            else:
                raise WebSocketError(f"unknown opcode {opcode}")
        return None

    async def send(self, opcode: int, data: bytes = b"") -> None:
        n = len(data)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, n)
        elif n < 1 << 16:
            head = struct.pack(">BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
        async with self._wlock:
            if self._close_sent:
                raise ConnectionResetError("websocket closed")
            if opcode == CLOSE:
                self._close_sent = True
            self.writer.write(head + data)
            await self.writer.drain()

    async def send_binary(self, data: bytes) -> None:
        await self.send(BINARY, data)

    async def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        if not self._close_sent:
            try:
                await self.send(CLOSE, struct.pack(">H", code) + reason.encode()[:120])
            except (ConnectionError, OSError):
                pass

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Close handshake: send close, wait (briefly) for the peer's, close the socket."""
        await self.close()
        try:
            async def drain():
                while not self.closed:
                    if await self.recv() is None:
                        return
            await asyncio.wait_for(drain(), timeout)
        except (asyncio.TimeoutError, WebSocketError, ConnectionError, OSError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class MessageChannel:
    """A byte stream over binary messages (SPDY tunnelled in WebSocket, as client-go's
    ``SPDY/3.1+portforward.k8s.io``): the :class:`pypod.kubelet.spdy.Channel` protocol."""

    def __init__(self, ws: Connection):
        self.ws = ws
        self._buf = bytearray()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            msg = await self.ws.recv()
            if msg is None:
                raise asyncio.IncompleteReadError(bytes(self._buf), n)
            self._buf += msg[1]
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def write(self, data: bytes) -> None:
        await self.ws.send_binary(data)

    async def write_eof(self) -> None:
        await self.ws.close()

    async def drain_input(self, timeout: float) -> None:
        async def drain() -> None:
            while await self.ws.recv() is not None:
                pass
        try:
            await asyncio.wait_for(drain(), timeout)
        except (asyncio.TimeoutError, WebSocketError, ConnectionError, OSError):
            pass

    async def close(self) -> None:
        self.ws.writer.close()
        try:
            await self.ws.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
