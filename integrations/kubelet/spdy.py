"""SPDY/3.1 sessions, server side, on asyncio: what kubelet, crictl and critest speak to a CRI
streaming server (through Kubernetes' httpstream, moby/spdystream on their side).

Written from the SPDY/3 draft (draft-mbelshe-httpbis-spdy-00 and its 3.1 revision):

- Every frame has an 8-byte head. A control frame: ``1 | version(15) = 3 | type(16) | flags(8) |
  length(24)``; a data frame: ``0 | stream id(31) | flags(8) | length(24)``. Flag FIN (1) ends the
  sender's half of a stream.
- Control frames used here: SYN_STREAM (1): stream id, associated stream id, priority and slot,
  a header block; SYN_REPLY (2): stream id, header block; RST_STREAM (3): stream id, status;
  SETTINGS (4); PING (6): a 32-bit id, answered with the same frame; GOAWAY (7): last good
  stream id, status; HEADERS (8): stream id, header block; WINDOW_UPDATE (9).
- A header block is ``count(32)`` then, per pair, ``len(32) name len(32) value`` (names lower
  case; several values of one name separated by NUL), compressed with zlib primed with the SPDY/3
  dictionary. Each direction keeps one zlib stream for the whole session, each block ending with
  a sync flush, so every block must be inflated (even one that is ignored) to stay in step.

Kubernetes' peers ignore flow control (no WINDOW_UPDATE is needed for them to keep sending, and
none is expected back), so this implementation does not window its sends either.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Awaitable, Callable, Protocol

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_INVALID_STREAM, RST_REFUSED_STREAM, RST_CANCEL = 1, 2, 3, 5
MAX_FRAME = 1 << 24  # the length field's limit
MAX_HEADER_BLOCK = 1 << 20
DATA_CHUNK = 32 << 10

# The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): these words, each with a
# 32-bit big-endian length before it, then common header values run together.
_DICT_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date etag "
    "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
    "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
    "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
    "method get status"
).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
_DICT_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _DICT_WORDS) + _DICT_TAIL.encode()


class ProtocolError(Exception):
    pass


class Channel(Protocol):
    """The byte stream a session runs on: a TCP connection, or WebSocket messages."""

    async def readexactly(self, n: int) -> bytes: ...  # IncompleteReadError at EOF

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self) -> None: ...  # half-close: the peer reads EOF

    async def drain_input(self, timeout: float) -> None: ...  # read and drop until EOF

    async def close(self) -> None: ...


class TcpChannel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_eof(self) -> None:
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except (OSError, ConnectionError):
            pass

    async def drain_input(self, timeout: float) -> None:
        async def drain() -> None:
            while await self.reader.read(65536):
                pass
        try:
            await asyncio.wait_for(drain(), timeout)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ConnectionError):
            pass


def encode_headers(headers: dict[str, str]) -> bytes:
    out = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        out += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(out)


def decode_headers(block: bytes) -> dict[str, str]:
    try:
        (count,), pos, out = struct.unpack_from(">I", block), 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4:pos + 4 + n].decode()
            pos += 4 + n
            (n,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4:pos + 4 + n].decode()
            pos += 4 + n
            if pos > len(block):
                raise ProtocolError("truncated header block")
            out[name.lower()] = value
        return out
    except (struct.error, UnicodeDecodeError) as e:
        raise ProtocolError(f"bad header block: {e}") from None


class Stream:
    """One SPDY stream opened by the peer. ``read()`` gives its data (b"" once the peer sent FIN
    or reset it); ``write``/``close`` send on our half."""

    def __init__(self, session: "Session", sid: int, headers: dict[str, str]):
        self.session, self.id, self.headers = session, sid, headers
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.remote_closed = False
        self.local_closed = False
        self.reset = False

    def __repr__(self) -> str:
        return f"<spdy stream {self.id} {self.headers.get('streamtype', '')}>"

    def _feed(self, data: bytes, fin: bool) -> None:
        if self.remote_closed:
            return
        if data:
            self._queue.put_nowait(data)
        if fin:
            self.remote_closed = True
            self._queue.put_nowait(b"")

    def _reset(self) -> None:
        self.reset = self.local_closed = True
        self._feed(b"", True)

    async def read(self) -> bytes:
        if self._queue.empty() and self.remote_closed:
            return b""
        data = await self._queue.get()
        if not data:
            self._queue.put_nowait(b"")  # EOF stays EOF for later readers
        return data

    async def write(self, data: bytes) -> None:
        if self.local_closed:
            raise ConnectionResetError(f"SPDY stream {self.id} is closed")
        for i in range(0, len(data), DATA_CHUNK):
            await self.session._data(self.id, data[i:i + DATA_CHUNK], False)

    async def close(self) -> None:
        """FIN our half (idempotent)."""
        if not self.local_closed:
            self.local_closed = True
            await self.session._data(self.id, b"", True)

    async def send_reset(self, status: int = RST_CANCEL) -> None:
        if not self.reset:
            self._reset()
            await self.session._control(RST_STREAM, 0, struct.pack(">II", self.id, status))


class Session:
    """A server-side SPDY/3.1 session. Each SYN_STREAM is answered with a SYN_REPLY and handed to
    ``on_stream`` (a plain callback); ``serve()`` runs until the peer goes away."""

    def __init__(self, channel: Channel, on_stream: Callable[[Stream], None | Awaitable[None]]):
        self.channel = channel
        self.on_stream = on_stream
        self.streams: dict[int, Stream] = {}
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                         zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._wlock = asyncio.Lock()
        self._last_stream = 0
        self.closed = asyncio.Event()
        self._goaway_sent = False
        self._reading = False
        self._done_reading = asyncio.Event()

    # -- sending --------------------------------------------------------------------------------
    async def _send(self, frame: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("SPDY session is closed")
        async with self._wlock:
            await self.channel.write(frame)

    async def _control(self, ftype: int, flags: int, payload: bytes) -> None:
        head = struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload))
        await self._send(head + payload)

    async def _data(self, sid: int, data: bytes, fin: bool) -> None:
        head = struct.pack(">II", sid & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(data))
        await self._send(head + data)

    def _header_block(self, headers: dict[str, str]) -> bytes:
        raw = encode_headers(headers)
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    async def reply(self, stream: Stream, headers: dict[str, str] | None = None) -> None:
        async with self._wlock:  # compression order must be send order
            block = self._header_block(headers or {})
            payload = struct.pack(">I", stream.id) + block
            head = struct.pack(">HHI", 0x8000 | VERSION, SYN_REPLY, len(payload))
            if not self.closed.is_set():
                await self.channel.write(head + payload)

    async def goaway(self, status: int = 0) -> None:
        if not self._goaway_sent and not self.closed.is_set():
            self._goaway_sent = True
            try:
                await self._control(GOAWAY, 0, struct.pack(">II", self._last_stream, status))
            except (OSError, ConnectionError):
                pass

    async def close(self, linger: float = 5.0) -> None:
        """GOAWAY, half-close, let the peer finish and close its side (up to ``linger``
        seconds), then close: closing a socket with unread input resets it, which can destroy
        the peer's last data."""
        await self.goaway()
        if self.closed.is_set():
            return
        self.closed.set()
        for s in list(self.streams.values()):
            s._reset()
        await self.channel.write_eof()
        if self._reading:
            try:
                await asyncio.wait_for(self._done_reading.wait(), linger)
            except asyncio.TimeoutError:
                pass
        else:
            await self.channel.drain_input(linger)
        await self.channel.close()

    # -- receiving ------------------------------------------------------------------------------
    def _inflate_block(self, block: bytes) -> dict[str, str]:
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as e:
            raise ProtocolError(f"header block does not inflate: {e}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError("header block too large")
        return decode_headers(raw)

    async def serve(self) -> None:
        """Read frames until the peer closes the connection or sends GOAWAY."""
        self._reading = True
        try:
            while True:
                head = await self.channel.readexactly(8)
                a, b = struct.unpack(">II", head)
                flags, length = b >> 24, b & 0xFFFFFF
                payload = await self.channel.readexactly(length) if length else b""
                if a & 0x80000000:
                    if (a >> 16) & 0x7FFF != VERSION:
                        raise ProtocolError(f"SPDY version {(a >> 16) & 0x7FFF}, not {VERSION}")
                    if not await self._on_control(a & 0xFFFF, flags, payload):
                        return
                else:
                    stream = self.streams.get(a & 0x7FFFFFFF)
                    if stream is None:
                        if not self.closed.is_set():
                            await self._control(RST_STREAM, 0, struct.pack(">II", a & 0x7FFFFFFF,
                                                                            RST_INVALID_STREAM))
                        continue
                    stream._feed(payload, bool(flags & FLAG_FIN))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._done_reading.set()
            for s in list(self.streams.values()):
                s._feed(b"", True)

    async def _on_control(self, ftype: int, flags: int, payload: bytes) -> bool:
        if ftype == SYN_STREAM:
            if len(payload) < 10:
                raise ProtocolError("short SYN_STREAM")
            sid = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            headers = self._inflate_block(payload[10:])
            if sid in self.streams or sid <= self._last_stream:
                await self._control(RST_STREAM, 0, struct.pack(">II", sid, RST_PROTOCOL_ERROR))
                return True
            self._last_stream = sid
            stream = Stream(self, sid, headers)
            self.streams[sid] = stream
            if flags & FLAG_FIN:
                stream._feed(b"", True)
            await self.reply(stream)
            result = self.on_stream(stream)
            if asyncio.iscoroutine(result):
                await result
        elif ftype == SYN_REPLY or ftype == HEADERS:
            if len(payload) >= 4:
                self._inflate_block(payload[4:])  # keep the zlib stream in step
        elif ftype == RST_STREAM:
            if len(payload) >= 8:
                stream = self.streams.get(struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF)
                if stream is not None:
                    stream._reset()
        elif ftype == PING:
            if not self.closed.is_set():  # while closing, the peer's last pings go unanswered
                await self._control(PING, 0, payload[:4])
        elif ftype == GOAWAY:
            return False
        # SETTINGS, WINDOW_UPDATE and unknown types: nothing to do
        return True
