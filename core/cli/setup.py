"""``pypod setup``: the explicit install step that gives a group read access to the data dir."""

from __future__ import annotations

import argparse

from . import config_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("setup", help="create the pypod group (if missing) and let it read the data dir")
    p.add_argument("--group", default=None, help="the group to create and give read access (default pypod)")
    p.set_defaults(handler=cmd_setup)


def cmd_setup(args: argparse.Namespace) -> int:
    import os

    from .. import access
    from ..errors import PermissionDenied

    if os.geteuid() != 0:
        raise PermissionDenied("pypod setup creates a group and changes the data dir: it needs root")
    for line in access.setup(config_of(args).data_dir, args.group or access.DEFAULT_GROUP):
        print(line)
    return 0
