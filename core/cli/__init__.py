"""The ``pypod`` command: a thin front over the engine, in rkt's and podman's conventions.

Exit codes: 0 success, 2 bad usage, 254 an engine error (as rkt); ``run`` passes the pod's
exit code through. Modules are imported per command so that cheap commands stay cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

ENGINE_ERROR = 254


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, rkt's and podman's exit code for usage
        self.exit(2, f"pypod: {message}\n")


def build_parser() -> Parser:
    p = Parser(prog="pypod", description="A pod-native, daemonless container engine.")
    p.add_argument("--dir", help="data directory (default $PYPOD_DIR or /var/lib/pypod)")
    p.add_argument("--config-dir", help="configuration directory (default $PYPOD_CONFIG_DIR or /etc/pypod)")
    p.add_argument("--insecure-options", default="",
                   help="comma-separated checks to skip for this command: image (signatures), tls "
                        "(certificates), all-fetch, all")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version="pypod " + _version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    from . import images, pods, setup, trust  # argument definitions only: the engine is imported per command

    images.register(sub)
    pods.register(sub)
    trust.register(sub)
    setup.register(sub)
    return p


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "argv"):  # only rkt-grammar commands take free-form flags
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.argv = extra + args.argv
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    from ..errors import PypodError

    try:
        return handler(args) or 0
    except PypodError as e:
        if args.debug:
            raise
        print(f"pypod: {e}", file=sys.stderr)
        return ENGINE_ERROR if e.exit_code == 1 else e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if args.debug:
            raise
        hint = ""
        if isinstance(e, PermissionError) and os.geteuid() != 0:
            hint = " (members of the data dir's group may read pods, images and events: see `pypod setup`)"
        print(f"pypod: {e}{hint}", file=sys.stderr)
        return ENGINE_ERROR


def each(items: Sequence[str], action: Callable[[str], str]) -> int:
    """Apply ``action`` to every item, printing what it returns; a failure is reported on one line
    and the others still run. The exit code says whether any failed."""
    from ..errors import PypodError

    failed = 0
    for item in items:
        try:
            print(action(item))
        except PypodError as e:
            print(f"pypod: {e}", file=sys.stderr)
            failed += 1
    return ENGINE_ERROR if failed else 0


def config_of(args: argparse.Namespace):
    from .. import config

    cfg = config.load(args.dir, args.config_dir)
    cfg.insecure = config.parse_insecure_options(getattr(args, "insecure_options", ""))
    return cfg


def require_root(what: str) -> None:
    """Commands that change state are root's; group members only read (as in rkt)."""
    from ..errors import PermissionDenied

    if os.geteuid() != 0:
        raise PermissionDenied(f"this command changes {what} and needs root")
