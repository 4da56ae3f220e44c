"""Logs on stderr in hclog's JSON form, which go-plugin parses line by line into the agent's log:
``{"@level":"info","@message":"...","@timestamp":"2026-01-02T15:04:05.000000Z","k":"v"}``.

The handler never raises: after the agent dies, stderr is a broken pipe and the plugin must keep
serving its tasks (the next agent reattaches), so write errors are swallowed.
"""

from __future__ import annotations

import json
import logging
import os
import time

_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error",
           logging.CRITICAL: "error", 5: "trace"}
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def timestamp(t: float) -> str:
    """hclog's layout ``2006-01-02T15:04:05.000000Z07:00``: exactly six fraction digits, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        d = {"@level": _LEVELS.get(record.levelno, "info"), "@message": msg,
             "@timestamp": timestamp(record.created), "@module": record.name}
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                d[k] = v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
        return json.dumps(d, ensure_ascii=False)


class FdHandler(logging.Handler):
    """One write(2) per line on a raw fd (stderr): no buffering to break, errors ignored."""

    def __init__(self, fd: int = 2):
        super().__init__()
        self.fd = fd
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        try:
            os.write(self.fd, (self.format(record) + "\n").encode("utf-8", "replace"))
        except BrokenPipeError:
            self.broken = True  # the agent is gone; a reattaching agent does not read old stderr
        except Exception:
            pass

    def handleError(self, record: logging.LogRecord) -> None:  # never print tracebacks to stderr
        pass


def setup(level: str = "info") -> logging.Logger:
    logging.raiseExceptions = False
    logging.addLevelName(5, "TRACE")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = FdHandler(2)
    h.setFormatter(JSONFormatter())
    root.addHandler(h)
    lv = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}.get(level.lower(), logging.INFO)
    root.setLevel(lv)
    logging.getLogger("grpc").setLevel(max(lv, logging.WARNING))
    logging.getLogger("asyncio").setLevel(max(lv, logging.WARNING))
    return logging.getLogger("pypod.nomad")
