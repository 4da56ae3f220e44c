"""The part of ``http-parser``'s API that pymesos uses, implemented over h11.

pymesos 0.3.15 (the last release) parses its event streams with ``http_parser.http.HttpParser``
from the ``http-parser`` package, whose last release (0.9.0, 2020, sdist only) does not build on
Python 3.11 (``longintrepr.h``, Cython 0.29 C-API errors) and whose setup.py imports ``imp``,
gone in 3.12. Rather than building its pure-Python fallback with a patched setup (which breaks on
the next Python), pypod installs pymesos with ``--no-deps`` plus what it really needs (six,
addict) and registers this module under the names pymesos imports (``http_parser``,
``http_parser.http``, ``http_parser.pyparser``) in ``sys.modules`` -- only inside the processes
that import :mod:`pypod.mesos`, so no generic top-level module lands in site-packages.

h11 is maintained, pure Python and already a dependency of httpx (pypod's registry client).

What pymesos calls (``pymesos/process.py``, ``Connection.read``)::

    p = HttpParser(); n = p.execute(buf, len(buf))   # n != len(buf) on a parse error
    p.is_headers_complete(); p.get_status_code(); p.get_headers(); p.is_chunked()
    p.is_partial_body(); p.recv_body(); p.is_message_complete(); p.get_errno()

The parser reads one HTTP/1.1 *response* (pymesos writes the request itself, raw, on its own
socket): h11 is told a request went out so that it expects the response, chunked or not.
"""

from __future__ import annotations

import sys
import types

import h11

# http-parser's pyparser error codes that pymesos may import (it only does so when the parser
# has an ``errno`` attribute, which this one deliberately has not: errors go through get_errno).
INVALID_CHUNK = 8
PARSE_ERROR = 1


class HttpParser:
    """An incremental HTTP/1.1 response parser with http-parser's method names."""

    def __init__(self, kind: int = 1, decompress: bool = False):
        self._conn = h11.Connection(h11.CLIENT)
        # pymesos sent the request itself; tell h11 one went out (a POST: any response body).
        self._conn.send(h11.Request(method="POST", target="/", headers=[("Host", "mesos"),
                                                                         ("Content-Length", "0")]))
        self._conn.send(h11.EndOfMessage())
        self._status: int | None = None
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self._complete = False
        self._chunked = False
        self._errno = 0
        self._errstr = ""

    # -- feeding ----------------------------------------------------------------------------
    def execute(self, data: bytes, length: int) -> int:
        """Parse ``data[:length]``; returns how much was consumed: ``length``, or 0 on an error
        (then :meth:`get_errno` is non-zero). ``length`` 0 means the peer closed."""
        if self._errno:
            return 0
        chunk = bytes(data[:length])
        try:
            self._conn.receive_data(chunk)
            while True:
                ev = self._conn.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    break
                if isinstance(ev, h11.InformationalResponse):
                    continue
                if isinstance(ev, h11.Response):
                    self._status = ev.status_code
                    self._reason = ev.reason.decode("latin-1")
                    for name, value in ev.headers:
                        key = name.decode("latin-1")
                        val = value.decode("latin-1")
                        self._headers[key] = f"{self._headers[key]}, {val}" if key in self._headers else val
                    te = self._headers.get("transfer-encoding", "")
                    self._chunked = "chunked" in te.lower()
                    self._headers_done = True
                elif isinstance(ev, h11.Data):
                    self._body.append(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    self._complete = True
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    break
        except h11.RemoteProtocolError as e:
            self._errno, self._errstr = PARSE_ERROR, str(e)
            return 0
        return length

    # -- what was parsed ------------------------------------------------------------------------
    def get_errno(self) -> int:
        return self._errno

    def get_errstr(self) -> str:
        return self._errstr

    def get_version(self) -> tuple[int, int]:
        return (1, 1)

    def get_status_code(self) -> int | None:
        return self._status

    def get_reason(self) -> str:
        return self._reason

    def get_headers(self) -> dict[str, str]:
        """Header names as the server sent them lower-cased (pymesos upper-cases them anyway)."""
        return dict(self._headers)

    def is_headers_complete(self) -> bool:
        return self._headers_done

    def is_chunked(self) -> bool:
        return self._chunked

    def is_partial_body(self) -> bool:
        """Body bytes are waiting to be taken with :meth:`recv_body`."""
        return bool(self._body)

    def is_message_begin(self) -> bool:
        return self._status is not None

    def is_message_complete(self) -> bool:
        return self._complete

    def should_keep_alive(self) -> bool:
        return self._headers.get("connection", "").lower() != "close"

    def recv_body(self) -> bytes:
        body = b"".join(self._body)
        self._body.clear()
        return body


def install() -> None:
    """Make ``import http_parser.http`` (as pymesos does) find this module, unless a process
    already imported an http_parser of its own."""
    if "http_parser" in sys.modules:
        return
    me = sys.modules[__name__]
    pkg = types.ModuleType("http_parser", "pypod's h11-backed stand-in for http-parser (see pypod.mesos.http_parser)")
    pkg.__path__ = []  # a package, so that submodule imports resolve through sys.modules
    pkg.http = me  # type: ignore[attr-defined]
    pkg.pyparser = me  # type: ignore[attr-defined]
    pkg.parser = me  # type: ignore[attr-defined]
    sys.modules["http_parser"] = pkg
    for sub in ("http", "pyparser", "parser"):
        sys.modules[f"http_parser.{sub}"] = me
