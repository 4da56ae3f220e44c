"""``pypod run``, ``prepare``, ``status``, ``list``, ``stop``, ``rm``, ``gc``, ``enter``, ``logs``,
``app ...``, ``events``: pods in rkt's conventions."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from . import config_of, each

RUN_EXTRA = {"--detach": False, "-d": False, "--uuid-file-save": True, "--pull-policy": True,
             "--quiet": False, "-q": False, "--grace-period": True}


def register(sub: argparse._SubParsersAction) -> None:
    for name, helptext in (("run", "run a pod: IMAGE [app flags] [--- IMAGE [app flags]]..."),
                           ("prepare", "prepare a pod to run later with run-prepared")):
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.add_argument("argv", nargs=argparse.REMAINDER)
        p.set_defaults(handler=cmd_run if name == "run" else cmd_prepare)

    p = sub.add_parser("run-prepared", help="run a prepared pod")
    p.add_argument("uuid")
    p.add_argument("--detach", "-d", action="store_true")
    p.set_defaults(handler=cmd_run_prepared)

    p = sub.add_parser("status", help="a pod's state and its apps' exit codes")
    p.add_argument("uuid", nargs="?")
    p.add_argument("--uuid-file")
    p.add_argument("--wait", nargs="?", const="inf", metavar="DURATION", help="wait for the pod to exit")
    p.add_argument("--wait-ready", nargs="?", const="inf", metavar="DURATION",
                   help="wait for the pod to be running with all its apps started")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("list", aliases=["ps"], help="list pods")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--no-legend", action="store_true")
    p.add_argument("--full", action="store_true")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("stop", help="stop pods (SIGTERM, SIGKILL after the grace period)")
    p.add_argument("uuids", nargs="*", metavar="UUID")
    p.add_argument("--uuid-file")
    p.add_argument("--force", action="store_true", help="SIGKILL at once")
    p.add_argument("--grace-period", "-t", default="10s")
    p.set_defaults(handler=cmd_stop)

    p = sub.add_parser("rm", help="remove exited or prepared pods now")
    p.add_argument("uuids", nargs="*", metavar="UUID")
    p.add_argument("--uuid-file")
    p.set_defaults(handler=cmd_rm)

    p = sub.add_parser("gc", help="garbage-collect exited pods (mark and sweep)")
    p.add_argument("--grace-period", default="30m")
    p.add_argument("--expire-prepared", default="24h")
    p.add_argument("--mark-only", action="store_true")
    p.set_defaults(handler=cmd_gc)

    for name in ("enter", "exec"):
        p = sub.add_parser(name, help="run a command inside a running app")
        p.add_argument("--app")
        p.add_argument("--tty", "-t", action="store_true", help="allocate a terminal")
        p.add_argument("--interactive", "-i", action="store_true", help="(stdin is always passed)")
        p.add_argument("uuid")
        p.add_argument("command", nargs=argparse.REMAINDER)
        p.set_defaults(handler=cmd_enter)

    p = sub.add_parser("logs", help="an app's output")
    p.add_argument("uuid")
    p.add_argument("--app")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--since", help="a duration (10m) or an RFC 3339 time")
    p.add_argument("--tail", type=int)
    p.add_argument("--timestamps", action="store_true")
    p.set_defaults(handler=cmd_logs)

    p = sub.add_parser("cat-manifest", help="print a pod's manifest")
    p.add_argument("uuid")
    p.add_argument("--pretty-print", action="store_true")
    p.set_defaults(handler=cmd_cat_manifest)

    p = sub.add_parser("export", help="an app's rootfs changes as a new image")
    p.add_argument("uuid")
    p.add_argument("name", help="name of the new image")
    p.add_argument("--app")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("events", help="show or follow the event log")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(handler=cmd_events)

    app = sub.add_parser("app", help="mutable pods: sandbox, add, start, stop, rm, list, status, exec, attach")
    asub = app.add_subparsers(dest="app_command", metavar="COMMAND")
    p = asub.add_parser("sandbox", help="start an empty mutable pod", add_help=False)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_sandbox)
    p = asub.add_parser("add", help="add an app: UUID IMAGE [app flags] [-- ARGS]", add_help=False)
    p.add_argument("uuid")
    p.add_argument("image")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_app_add)
    for name, handler in (("start", "cmd_app_start"), ("stop", "cmd_app_stop"), ("rm", "cmd_app_rm"),
                          ("status", "cmd_app_status"), ("attach", "cmd_app_attach")):
        p = asub.add_parser(name)
        p.add_argument("uuid")
        p.add_argument("--app", required=True)
        if name == "stop":
            p.add_argument("--grace-period", "-t", default="10s")
        if name == "status":
            p.add_argument("--format", choices=["text", "json"], default="text")
        p.set_defaults(handler=globals()[handler])
    p = asub.add_parser("list")
    p.add_argument("uuid")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--no-legend", action="store_true")
    p.set_defaults(handler=cmd_app_list)
    p = asub.add_parser("exec")
    p.add_argument("uuid")
    p.add_argument("--app", required=True)
    p.add_argument("--tty", "-t", action="store_true")
    p.add_argument("--interactive", "-i", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_enter)

    p = sub.add_parser("_hook")  # conmon's exit command; no help: not listed
    p.add_argument("hook", choices=["app-exited"])
    p.add_argument("uuid")
    p.add_argument("app")
    p.set_defaults(handler=cmd_hook)


def _engine(args: argparse.Namespace):
    from ..pods.engine import Engine

    return Engine(config_of(args))


def _uuid(args: argparse.Namespace, value: str | None) -> str:
    from ..errors import UsageError

    if getattr(args, "uuid_file", None):
        from ..pods.state import read_uuid_file

        return read_uuid_file(args.uuid_file)
    if not value:
        raise UsageError("a pod UUID is required (or --uuid-file)")
    return value


def _duration(text: str | None) -> float | None:
    from ..config import parse_duration

    if text is None or text == "inf":
        return None
    return parse_duration(text)


def _is_duration(text: str) -> bool:
    from ..errors import UsageError

    try:
        _duration(text)
        return True
    except UsageError:
        return False


def _extra(rest: list[str]) -> dict[str, str]:
    out = {}
    for tok in rest:
        name, _, value = tok.partition("=")
        out[name.lstrip("-")] = value or "true"
    return out


def _require_root() -> None:
    from ..errors import PermissionDenied

    if os.geteuid() != 0:
        raise PermissionDenied("this command changes pods and needs root")


# -- run ----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from ..pods.flags import build_from_flags

    _require_root()
    manifest, rest = build_from_flags(args.argv, extra_flags=RUN_EXTRA)
    opts = _extra(rest)
    engine = _engine(args)
    progress = _progress()
    uuid = engine.run(manifest, pull=opts.get("pull-policy", "new"), progress=progress)
    _save_uuid(opts.get("uuid-file-save"), uuid)
    if "detach" in opts or "d" in opts:
        print(uuid)
        return 0
    return _foreground(engine, uuid, _duration(opts.get("grace-period")) or 10.0)


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..pods.flags import build_from_flags

    _require_root()
    manifest, rest = build_from_flags(args.argv, extra_flags=RUN_EXTRA)
    opts = _extra(rest)
    pod = _engine(args).prepare(manifest, pull=opts.get("pull-policy", "new"), progress=_progress())
    _save_uuid(opts.get("uuid-file-save"), pod.uuid)
    print(pod.uuid)
    return 0


def cmd_run_prepared(args: argparse.Namespace) -> int:
    _require_root()
    engine = _engine(args)
    uuid = engine.run_prepared(args.uuid)
    if args.detach:
        print(uuid)
        return 0
    return _foreground(engine, uuid, 10.0)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from ..pods.flags import build_from_flags

    _require_root()
    manifest, rest = build_from_flags(args.argv, extra_flags=RUN_EXTRA, allow_no_apps=True)
    opts = _extra(rest)
    uuid = _engine(args).sandbox(manifest)
    _save_uuid(opts.get("uuid-file-save"), uuid)
    print(uuid)
    return 0


def _progress():
    from .output import PullProgress

    return PullProgress()


def _save_uuid(path: str | None, uuid: str) -> None:
    if path:
        from ..pods.state import write_uuid_file

        write_uuid_file(path, uuid)


def _foreground(engine, uuid: str, grace: float) -> int:
    """Stream the apps' output until the pod exits; SIGINT/SIGTERM stop the pod."""
    from ..pods import logs

    stopping = []

    def on_signal(signum, frame):
        if not stopping:
            stopping.append(signum)
            import threading

            threading.Thread(target=lambda: engine.stop(uuid, grace=grace), daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    paths = engine.log_paths(uuid)
    prefix = len(paths) > 1
    pod = engine.pods.get(uuid)

    def done() -> bool:
        if not pod.refresh().is_running:
            return True
        engine.poll_exits(uuid)
        return False

    for e in logs.follow(paths, done=done):
        out = sys.stdout if e.stream == "stdout" else sys.stderr
        out.write(f"{e.app}: {e.text}" if prefix else e.text)
        out.flush()
    info = engine.status(uuid)
    if info.exit_code is None:
        return 0 if not stopping else 128 + stopping[0]
    return info.exit_code


# -- looking at pods ----------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from .output import human_time, print_json

    engine = _engine(args)
    for opt in ("wait", "wait_ready"):  # `--wait UUID`: the optional duration swallowed the UUID
        value = getattr(args, opt)
        if value not in (None, "inf") and args.uuid is None and not _is_duration(value):
            args.uuid = value
            setattr(args, opt, "inf")
    uuid = _uuid(args, args.uuid)
    if args.wait_ready is not None:
        _wait_ready(engine, uuid, _duration(args.wait_ready))
    if args.wait is not None:
        try:
            info = engine.wait(uuid, _duration(args.wait))
        except TimeoutError:
            from ..errors import PypodError

            raise PypodError(f"pod {uuid} is still running after {args.wait}") from None
    else:
        info = engine.status(uuid)
    if args.format == "json":
        print_json(info.to_dict())
        return 0
    lines = [f"state={info.state}", f"created={human_time(info.created)}", f"started={human_time(info.started)}"]
    if info.networks:  # rkt's form: networks=default:ip4=172.16.28.7[,NAME:ip6=...]
        addrs = [f"{n['name']}:ip{6 if ':' in ip else 4}={ip.split('/')[0]}" for n in info.networks for ip in n["ips"]]
        if addrs:
            lines.append(f"networks={','.join(addrs)}")
    if info.exited:
        lines.append(f"exited={human_time(info.exited)}")
    if info.exit_code is not None:
        lines.append(f"exit-code={info.exit_code}")
    for a in info.apps:
        extra = f" signal={a.signal}" if a.signal else ""
        extra += " oom-killed=true" if a.oom_killed else ""
        extra += f" restarts={a.restarts}" if a.restarts else ""
        code = a.exit_code if a.exit_code is not None else "-"
        lines.append(f"app-{a.name}={code} state={a.state}{extra}")
    print("\n".join(lines))
    return 0


def _wait_ready(engine, uuid: str, timeout: float | None) -> None:
    from ..errors import PypodError

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = engine.status(uuid)
        if info.state == "running" and all(a.state in ("running", "exited") for a in info.apps):
            return
        if info.state not in ("running", "prepared", "preparing", "embryo"):
            raise PypodError(f"pod {uuid} is {info.state}: it will not become ready")
        if deadline is not None and time.monotonic() > deadline:
            raise PypodError(f"pod {uuid} is not ready after {timeout:g}s")
        time.sleep(0.05)


def cmd_list(args: argparse.Namespace) -> int:
    from .output import human_time, print_json, print_table

    pods = _engine(args).list()
    if args.format == "json":
        print_json([p.to_dict() for p in pods])
        return 0
    rows = []
    for p in pods:
        uuid = p.uuid if args.full else p.uuid[:8]
        nets = ",".join(f"{n['name']}:{','.join(i.split('/')[0] for i in n['ips'])}" for n in p.networks)
        first = True
        for a in p.apps or [None]:
            rows.append([uuid if first else "", a.name if a else "-", a.image if a else "-",
                         p.state if first else "", human_time(p.created) if first else "",
                         human_time(p.started) if first else "", nets if first else ""])
            first = False
    print_table(["UUID", "APP", "IMAGE NAME", "STATE", "CREATED", "STARTED", "NETWORKS"], rows,
                legend=not args.no_legend)
    return 0


def cmd_cat_manifest(args: argparse.Namespace) -> int:
    import json

    pod = _engine(args).pods.get(args.uuid)
    data = pod.manifest_bytes()
    sys.stdout.write(json.dumps(json.loads(data), indent=2) + "\n" if args.pretty_print else data.decode() + "\n")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from ..pods import logs

    engine = _engine(args)
    pod = engine.pods.get(args.uuid)
    paths = {args.app: engine.log_path(pod.uuid, args.app)} if args.app else engine.log_paths(pod.uuid)
    since = _since(args.since)
    if args.follow:
        entries = logs.follow(paths, done=lambda: not pod.refresh().is_running, since=since, tail=args.tail)
    else:
        entries = iter(logs.read(paths, since=since, tail=args.tail))
    prefix = len(paths) > 1
    for e in entries:
        out = sys.stdout if e.stream == "stdout" else sys.stderr
        out.write((f"{e.time} " if args.timestamps else "") + (f"{e.app}: " if prefix else "") + e.text)
        out.flush()
    return 0


def _since(text: str | None) -> float | None:
    if not text:
        return None
    from ..pods.logs import parse_time

    try:
        return parse_time(text)
    except ValueError:
        return time.time() - (_duration(text) or 0)


def cmd_events(args: argparse.Namespace) -> int:
    import json

    from .. import events

    cfg = config_of(args)
    filters = {}
    for f in args.filter:
        k, _, v = f.partition("=")
        filters.setdefault(k, []).append(v)
    if args.follow:
        stream = events.follow(cfg.data_dir, since=args.since, filters=filters)
    else:
        stream = events.read(cfg.data_dir, since=args.since, until=args.until, filters=filters)
    for ev in stream:
        d = ev.to_dict() if hasattr(ev, "to_dict") else dict(ev)
        if args.format == "json":
            print(json.dumps(d), flush=True)
        else:
            attrs = " ".join(f"{k}={v}" for k, v in d.items() if k not in ("time", "type"))
            print(f"{d.get('time')} {d.get('type')} {attrs}", flush=True)
    return 0


# -- changing pods ------------------------------------------------------------------------------
def cmd_stop(args: argparse.Namespace) -> int:
    _require_root()
    engine = _engine(args)
    grace = _duration(args.grace_period) or 0.0
    return each(args.uuids or [_uuid(args, None)], lambda u: engine.stop(u, grace=grace, force=args.force).uuid)


def cmd_rm(args: argparse.Namespace) -> int:
    _require_root()
    engine = _engine(args)

    def rm(uuid: str) -> str:
        engine.rm(uuid)
        return f"removed {uuid}"

    return each(args.uuids or [_uuid(args, None)], rm)


def cmd_gc(args: argparse.Namespace) -> int:
    _require_root()
    report = _engine(args).gc(grace_period=_duration(args.grace_period) or 0.0,
                              expire_prepared=_duration(args.expire_prepared) or 0.0, mark_only=args.mark_only)
    for u in report.marked:
        print(f"marked {u}")
    for u in report.removed:
        print(f"removed {u}")
    for u, why in report.errors:
        print(f"pypod: gc of {u} failed (retried next gc): {why}", file=sys.stderr)
    return 254 if report.errors else 0


def cmd_enter(args: argparse.Namespace) -> int:
    _require_root()
    engine = _engine(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = engine.enter_argv(args.uuid, args.app, command or ["/bin/sh"], tty=args.tty or sys.stdin.isatty())
    os.execvp(argv[0], argv)
    return 0  # not reached


def cmd_export(args: argparse.Namespace) -> int:
    _require_root()
    img = _engine(args).export(args.uuid, args.app, args.name)
    print(img.id)
    return 0


def cmd_app_add(args: argparse.Namespace) -> int:
    from ..pods.flags import parse_app_flags

    _require_root()
    app = parse_app_flags(args.image, args.argv)
    _engine(args).app_add(args.uuid, app)
    return 0


def cmd_app_start(args: argparse.Namespace) -> int:
    _require_root()
    _engine(args).app_start(args.uuid, args.app)
    return 0


def cmd_app_stop(args: argparse.Namespace) -> int:
    _require_root()
    info = _engine(args).app_stop(args.uuid, args.app, grace=_duration(args.grace_period) or 0.0)
    print(f"{info.name} exited with {info.exit_code}")
    return 0


def cmd_app_rm(args: argparse.Namespace) -> int:
    _require_root()
    _engine(args).app_rm(args.uuid, args.app)
    return 0


def cmd_app_list(args: argparse.Namespace) -> int:
    from .output import print_json, print_table

    info = _engine(args).status(args.uuid)
    if args.format == "json":
        print_json([a.to_dict() for a in info.apps])
        return 0
    print_table(["NAME", "IMAGE", "STATE", "EXIT CODE"],
                [[a.name, a.image, a.state, "" if a.exit_code is None else a.exit_code] for a in info.apps],
                legend=not args.no_legend)
    return 0


def cmd_app_status(args: argparse.Namespace) -> int:
    from ..errors import NotFound
    from .output import human_time, print_json

    info = _engine(args).status(args.uuid)
    app = next((a for a in info.apps if a.name == args.app), None)
    if app is None:
        raise NotFound(f"pod {info.uuid} has no app {args.app!r}")
    if args.format == "json":
        print_json(app.to_dict())
        return 0
    print(f"name={app.name}\nstate={app.state}\ncreated={human_time(app.created)}\n"
          f"started={human_time(app.started)}\nfinished={human_time(app.finished)}\n"
          f"exit-code={'' if app.exit_code is None else app.exit_code}\nimage-id={app.image_id}")
    return 0


def cmd_app_attach(args: argparse.Namespace) -> int:
    """Copy the app's output to ours and our input to the app, over conmon's attach socket."""
    import select

    from ..stage1 import conmon

    path = _engine(args).attach_socket(args.uuid, args.app)
    with conmon.Attach(path, timeout=None) as att:
        fds = [att.sock.fileno(), sys.stdin.fileno()] if not sys.stdin.closed else [att.sock.fileno()]
        while True:
            ready, _, _ = select.select(fds, [], [])
            if att.sock.fileno() in ready:
                msg = att.recv()
                if msg is None:
                    return 0
                stream, data = msg
                out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
                out.write(data)
                out.flush()
            if sys.stdin.fileno() in ready:
                data = os.read(sys.stdin.fileno(), 65536)
                if not data:
                    fds.remove(sys.stdin.fileno())
                    continue
                att.send(data)


def cmd_hook(args: argparse.Namespace) -> int:
    _engine(args).on_app_exited(args.uuid, args.app)
    return 0
