"""What both services share: one engine per worker thread, errors as gRPC status codes.

The gRPC server runs each call on a worker thread. The engine is cheap to make and its image
store holds a SQLite connection that must not be shared by concurrent transactions, so every
thread gets its own :class:`~pypod.pods.engine.Engine` over the same data dir.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable

import grpc

from pypod.config import Config
from pypod.errors import Conflict, NotFound, PermissionDenied, PypodError, RegistryError, UsageError
from pypod.pods.engine import Engine

log = logging.getLogger("pypod.cri")


class Fail(Exception):
    """Abort the call with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def status_code(e: BaseException) -> grpc.StatusCode:
    from .mapping import Unsupported

    if isinstance(e, Fail):
        return e.code
    if isinstance(e, Unsupported):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(e, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, UsageError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(e, Conflict):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(e, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(e, RegistryError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.UNKNOWN


def rpc(fn: Callable) -> Callable:
    """Run a servicer method; engine errors become the gRPC status the CRI expects."""

    @functools.wraps(fn)
    def call(self, request, context):
        try:
            return fn(self, request, context)
        except (Fail, PypodError) as e:
            code = status_code(e)
            if code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                log.warning("%s: %s", fn.__name__, e)
            context.abort(code, str(e))
        except grpc.RpcError:
            raise
        except Exception as e:  # a bug or a system failure: say what it was, keep serving
            if context.code() is not None:  # aborted already (context.abort raises Exception)
                raise
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    return call


class EngineOwner:
    """A thread-local engine per worker thread."""

    def __init__(self, config: Config):
        self.config = config
        self._local = threading.local()

    @property
    def engine(self) -> Engine:
        eng = getattr(self._local, "engine", None)
        if eng is None:
            eng = self._local.engine = Engine(self.config)
        return eng


def need(value: Any, what: str) -> Any:
    if not value:
        raise Fail(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is required")
    return value
