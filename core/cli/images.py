"""``pypod fetch`` and ``pypod image ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config_of, require_root

LOCAL_SOURCES = ("oci:", "oci-archive:", "docker-archive:")


def register(sub: argparse._SubParsersAction) -> None:
    def fetch_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("images", nargs="+", metavar="IMAGE",
                       help="docker://REF, REF, oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF]")
        p.add_argument("--platform", help="OS/ARCH[/VARIANT] to select from an index (default: the host's)")
        p.add_argument("--name", help="name for an image from a local source")
        p.add_argument("--insecure-options", default=argparse.SUPPRESS,
                       help="checks to skip for this command (as the global flag): image, tls, all-fetch")
        p.set_defaults(handler=cmd_fetch)

    fetch_args(sub.add_parser("fetch", help="fetch images into the store"))
    image = sub.add_parser("image", help="manage images").add_subparsers(dest="image_command", metavar="COMMAND")
    fetch_args(image.add_parser("pull", help="fetch images into the store (alias of fetch)"))
    fetch_args(image.add_parser("fetch", help="alias of fetch"))

    p = image.add_parser("list", aliases=["ls"], help="list images")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--no-legend", action="store_true")
    p.add_argument("--full", action="store_true", help="full image IDs")
    p.set_defaults(handler=cmd_list)

    p = image.add_parser("inspect", help="show an image's record and config as JSON")
    p.add_argument("image")
    p.add_argument("--format", choices=["json"], default="json")
    p.set_defaults(handler=cmd_inspect)

    p = image.add_parser("cat-manifest", help="print an image's manifest")
    p.add_argument("image")
    p.add_argument("--pretty-print", action="store_true")
    p.set_defaults(handler=cmd_cat_manifest)

    p = image.add_parser("tag", help="give an image another name")
    p.add_argument("image")
    p.add_argument("name")
    p.set_defaults(handler=cmd_tag)

    p = image.add_parser("rm", help="remove images (a name, or the image by ID or last name)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--force", "-f", action="store_true", help="also remove images that pods use")
    p.set_defaults(handler=cmd_rm)

    p = image.add_parser("gc", help="remove unused images, orphan blobs and snapshots")
    p.add_argument("--grace-period", default="24h", help="keep images used within this time (default 24h)")
    p.set_defaults(handler=cmd_gc)

    p = image.add_parser("export", help="write an image to an archive")
    p.add_argument("image")
    p.add_argument("output")
    p.add_argument("--format", choices=["oci-archive", "docker-archive", "oci"], default="oci-archive")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=cmd_export)

    p = image.add_parser("extract", help="write an image as an OCI layout directory")
    p.add_argument("image")
    p.add_argument("target", metavar="DIR")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=cmd_extract)

    p = image.add_parser("render", help="write an image's flattened rootfs into a directory")
    p.add_argument("image")
    p.add_argument("target", metavar="DIR")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=cmd_render)

    p = image.add_parser("import", help="make an image from a rootfs tarball")
    p.add_argument("tarball")
    p.add_argument("--name", required=True)
    p.set_defaults(handler=cmd_import)


def _store(args: argparse.Namespace):
    from ..images import ImageStore

    return ImageStore(config_of(args))


def cmd_fetch(args: argparse.Namespace) -> int:
    from .output import PullProgress

    require_root("images")
    store = _store(args)
    for spec in args.images:
        progress = PullProgress()
        if spec.startswith(LOCAL_SOURCES):
            img = store.import_source(spec, name=args.name, platform=args.platform, progress=progress)
        else:
            if args.name:
                from ..errors import UsageError
                raise UsageError("--name applies to local sources (oci:, oci-archive:, docker-archive:)")
            img = store.pull(spec, platform=args.platform, progress=progress)
        print(img.id)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .output import human_size, human_time, print_json, print_table

    images = _store(args).list()
    if args.format == "json":
        print_json([i.to_json() for i in images])
        return 0
    rows = []
    for i in images:
        ident = i.id if args.full else i.id[7:19]
        for name in i.names or ["<none>"]:
            rows.append([ident, name, human_time(i.imported), human_time(i.last_used), human_size(i.size)])
    print_table(["ID", "NAME", "IMPORT TIME", "LAST USED", "SIZE"], rows, legend=not args.no_legend)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .output import print_json

    store = _store(args)
    img = store.resolve(args.image)
    record = img.to_json()
    record["config"] = store.image_config(img).raw
    print_json(record)
    return 0


def cmd_cat_manifest(args: argparse.Namespace) -> int:
    import json

    store = _store(args)
    data = store.manifest_bytes(store.resolve(args.image))
    if args.pretty_print:
        sys.stdout.write(json.dumps(json.loads(data), indent=2) + "\n")
    else:
        sys.stdout.write(data.decode() + "\n")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    require_root("images")
    img = _store(args).tag(args.image, args.name)
    print(img.id)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from . import each

    require_root("images")
    store = _store(args)

    def rm(name: str) -> str:
        removed = store.remove(name, force=args.force)
        return f"removed {removed[0]}" if removed else f"untagged {name}"

    return each(args.images, rm)


def cmd_gc(args: argparse.Namespace) -> int:
    from ..config import parse_duration
    from .output import human_size

    require_root("images")
    report = _store(args).gc(parse_duration(args.grace_period))
    for image_id in report.images:
        print(f"removed image {image_id}")
    print(f"removed {report.blobs} blobs ({human_size(report.bytes_freed)}), {report.snapshots} snapshots, "
          f"{report.partial} partial downloads or unpacks")
    return 0


def _check_target(path: Path, overwrite: bool, is_dir: bool) -> None:
    from ..errors import Conflict

    if path.exists() and not overwrite and (not is_dir or any(path.iterdir())):
        raise Conflict(f"{path} exists (use --overwrite)")
    if path.exists() and overwrite:
        import shutil

        shutil.rmtree(path) if path.is_dir() else path.unlink()


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.output)
    _check_target(out, args.overwrite, args.format == "oci")
    _store(args).export(args.image, out, args.format)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    out = Path(args.target)
    _check_target(out, args.overwrite, True)
    _store(args).export(args.image, out, "oci")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    out = Path(args.target)
    _check_target(out, args.overwrite, True)
    _store(args).render(args.image, out)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .output import PullProgress

    require_root("images")
    img = _store(args).import_rootfs(Path(args.tarball), args.name, progress=PullProgress())
    print(img.id)
    return 0
