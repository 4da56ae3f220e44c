"""Measure stage1's basic costs on this host (root): ``python -m pypod.stage1.bench [-n 30]``.

Prints median wall times per runtime for: the raw runtime call overhead (crun's private mount
namespace wrapper vs the bare binary), ``runtime run`` of ``true``, conmon + runtime
create/start/wait/delete of ``true`` (the figure host.md anchors at crun 57 ms, runc 82 ms), infra
start + destroy, and a whole pod through the oci flavor (prepare, start, 2 apps, stop, gc).
Leaves nothing behind (its own run root, cgroup parent and temp dir are removed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from typing import Callable


def _rootfs(base: str) -> str:
    root = os.path.join(base, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for a in ("sh", "true", "sleep"):
        os.symlink("busybox", os.path.join(root, "bin", a))
    for d in ("proc", "dev", "sys", "etc", "tmp"):
        os.makedirs(os.path.join(root, d))
    return root


def _median_ms(fn: Callable[[int], None], n: int) -> float:
    fn(-1)  # warm-up
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="iterations per measurement")
    ap.add_argument("--runtime", action="append", help="only these runtimes")
    args = ap.parse_args(argv)

    from . import AppConfig, PodConfig, cgroups, conmon, get_flavor, infra, spec
    from .runtime import available_runtimes

    conmon.become_subreaper()
    tag = uuid.uuid4().hex[:8]
    run_root, parent = f"/run/pypod-bench-{tag}", f"/pypod-bench-{tag}"
    base = tempfile.mkdtemp(prefix="pypod-bench-")
    rootfs = _rootfs(base)
    v2 = cgroups.detect().mode == "v2"
    rts = available_runtimes(run_root)
    try:
        for name, rt in rts.items():
            if args.runtime and name not in args.runtime:
                continue
            results: dict[str, float] = {}
            bundle = os.path.join(base, name, "true")
            os.makedirs(bundle)
            cfg = spec.generate(spec.AppSpec(args=["true"], rootfs=rootfs, readonly_rootfs=True,
                                             cgroups_path=f"{parent}/raw/true"), cgroup_v2=v2)
            spec.write_json(os.path.join(bundle, "config.json"), cfg)
            os.makedirs(rt.root, exist_ok=True)

            results["runtime list (call overhead)"] = _median_ms(
                lambda i: rt.run("list"), args.n)
            if rt.wrapped:
                results["bare crun list (no wrapper)"] = _median_ms(
                    lambda i: subprocess.run([rt.binary, f"--root={rt.root}", "list"],
                                             capture_output=True, check=True), args.n)

            def raw_run(i: int) -> None:
                subprocess.run(rt.argv("run", "--bundle", bundle, f"raw-{i}"), check=True,
                               capture_output=True)
            results["runtime run true"] = _median_ms(raw_run, args.n)

            def conmon_true(i: int) -> None:
                d = os.path.join(base, name, f"c{i}")
                f = conmon.Files(cid=f"bench-{tag}-{i}", bundle=bundle, state_dir=d,
                                 log_path=os.path.join(d, "log"), exit_dir=os.path.join(d, "exits"),
                                 socket_dir=os.path.join(run_root, "attach"))
                c = conmon.create(rt, f)
                rt.start(f.cid)
                if conmon.wait_exit(f, 30, c.pid) != 0:
                    raise RuntimeError("true did not exit 0")
                rt.delete(f.cid)
                conmon.cleanup(f)
            results["conmon + create/start/wait/delete true"] = _median_ms(conmon_true, args.n)

            def infra_cycle(i: int) -> None:
                pod = f"bench-{tag}-infra-{i}"
                inf = infra.start(rt, infra.InfraConfig(pod_id=pod, hostname="b", cgroup_parent=parent),
                                  dir=os.path.join(base, name, f"i{i}"),
                                  ns_dir=os.path.join(run_root, "pods", pod, "ns"),
                                  exit_dir=os.path.join(base, name, "iexits"),
                                  socket_dir=os.path.join(run_root, "attach"), run_root=run_root)
                inf.destroy(rt)
                cgroups.remove(cgroups.pod_path(pod, parent))
            results["infra start + destroy"] = _median_ms(infra_cycle, args.n)

            fl = get_flavor("oci")

            def pod_cycle(i: int) -> None:
                pod = PodConfig(id=f"bench-{tag}-pod-{i}", dir=os.path.join(base, name, f"p{i}"),
                                hostname="b", runtime=name, run_root=run_root, cgroup_parent=parent)
                fl.prepare(pod)
                fl.start(pod)
                for app in ("a", "b"):
                    fl.add_app(pod, AppConfig(app, spec.AppSpec(args=["sleep", "100"], rootfs=rootfs,
                                                                readonly_rootfs=True)))
                    fl.start_app(pod, app)
                fl.stop(pod, grace=0)
                fl.gc(pod)
            results["pod: prepare+start+2 apps+stop+gc"] = _median_ms(pod_cycle, max(3, args.n // 3))

            print(f"{name} ({rt.version()}{', private mount ns wrapper' if rt.wrapped else ''}):")
            for k, v in results.items():
                print(f"  {k:42s} {v:7.1f} ms")
    finally:
        for rt in rts.values():
            if os.path.isdir(rt.root):
                for cid in os.listdir(rt.root):
                    if not cid.startswith("."):
                        rt.delete(cid, force=True)
        try:
            cgroups.remove(parent, kill=True)
        except Exception as e:  # report, do not hide
            print(f"warning: {e}")
        shutil.rmtree(run_root, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
        time.sleep(0.1)
        conmon.reap_adopted()


if __name__ == "__main__":
    main()
