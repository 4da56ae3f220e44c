#!/usr/bin/env python3
"""critest's benchmark mode against pypod-cri and against Debian's containerd, side by side.

    .venv/bin/python bench/cri.py [--pods 40] [--containers 40] [--images 10] [--only pypod|containerd]

Both runtimes get the same images from the same local ``docker-registry`` through a registry
mirror (pypod: ``[[registry]]`` rewrites; containerd: its CRI plugin's ``registry.mirrors``), and
the same CNI plugin chain (pypod's default network: bridge + host-local + portmap + firewall;
containerd gets a copy under its own name, bridge and subnet so that the two never share IPAM
state). critest (``-benchmark``) drives each with the same parameters, one operation at a time
(parallelism 1: the host has 2 vCPUs, shared). Printed: per CRI operation the median and p90 in
milliseconds for each runtime and the ratio pypod/containerd (below 1: pypod is faster), plus
critest's "start a container from scratch" measurement (RunPodSandbox, CreateContainer,
StartContainer, StopPodSandbox, RemovePodSandbox as one).

Needs root, crictl/critest (tests/cri/build_tools.sh) and the containerd package
(``apt-get install containerd``; nothing of it is started as a service: this script runs its own
instance with its own root, state and socket, and removes everything it made).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "cri")]

import cri_images  # noqa: E402
from cri_env import TOOLS, CriEnv  # noqa: E402

from support.registry import Registry  # noqa: E402

PULL_IMAGE = "gcr.io/k8s-staging-cri-tools/test-image-1:latest"
LIST_IMAGES = ["gcr.io/k8s-staging-cri-tools/test-image-2:latest", "gcr.io/k8s-staging-cri-tools/test-image-3:latest"]
CONTAINERD_NET = {"name": "cribench", "bridge": "cribench0", "subnet": "172.29.0.0/16"}


class Containerd:
    """Debian's containerd with its CRI plugin, in a directory of its own."""

    def __init__(self, work: Path, registry_host: str):
        self.work = work
        self.socket = work / "containerd.sock"
        self.registry_host = registry_host
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def config(self) -> str:
        mirrors = "\n".join(
            f'  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{host}"]\n'
            f'    endpoint = ["http://{self.registry_host}/v2/{host}"]'
            for host in ("registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws"))
        return f"""version = 2
root = "{self.work}/root"
state = "{self.work}/state"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  restrict_oom_score_adj = true   # root here lacks CAP_SYS_RESOURCE: a sandbox's -998 would fail in runc
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.work}/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
{mirrors}
"""

    def start(self) -> None:
        from pypod.network import default_network_config

        if not shutil.which("containerd"):
            raise SystemExit("containerd is not installed: apt-get install containerd")
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "config.toml").write_text(self.config())
        net = default_network_config(CONTAINERD_NET["subnet"], CONTAINERD_NET["bridge"])
        net["name"] = CONTAINERD_NET["name"]
        (self.work / "net.d").mkdir(exist_ok=True)
        (self.work / "net.d" / "10-cribench.conflist").write_text(json.dumps(net, indent=1))
        log = open(self.work / "containerd.log", "ab")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.work / "config.toml")], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {(self.work / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.5)  # the CRI plugin registers after the socket appears

    def crictl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(TOOLS / "crictl"), "--config", "/dev/null", "-r", self.endpoint, "-i",
                               self.endpoint, *args], capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        """Remove every sandbox and image through CRI, stop containerd, then check for leftovers
        (shims, mounts under its root) and remove its directories."""
        if self.proc is not None and self.proc.poll() is None:
            for pod in self.crictl("pods", "-q").stdout.split():
                self.crictl("rmp", "-f", pod)
            self.crictl("rmi", "--all")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for line in subprocess.run(["pgrep", "-af", "containerd-shim"], capture_output=True, text=True).stdout.splitlines():
            if str(self.socket) in line:  # a shim of ours outlived its containers
                os.kill(int(line.split()[0]), signal.SIGKILL)
        from pypod.stage1 import conmon

        time.sleep(0.5)
        conmon.reap_adopted(("conmon", "containerd-shim"))  # shims daemonise: this subreaper adopted them
        with open("/proc/self/mountinfo") as f:
            mine = [line.split()[4] for line in f if line.split()[4].startswith(str(self.work))]
        for point in sorted(mine, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        subprocess.run(["ip", "link", "del", CONTAINERD_NET["bridge"]], capture_output=True)
        ipam = Path("/var/lib/cni/networks") / CONTAINERD_NET["name"]  # host-local's state: empty by now
        if ipam.is_dir() and not set(os.listdir(ipam)) - {"lock", "last_reserved_ip.0"}:
            shutil.rmtree(ipam, ignore_errors=True)


def params(pods: int, containers: int, images: int) -> dict:
    return {"containersNumber": containers, "containersNumberParallel": 1, "containerBenchmarkTimeoutSeconds": 60,
            "podsNumber": pods, "podsNumberParallel": 1, "podBenchmarkTimeoutSeconds": 60,
            "imagesNumber": images, "imagesNumberParallel": 1, "imageBenchmarkTimeoutSeconds": 60,
            "imagePullingBenchmarkImage": PULL_IMAGE, "imageListingBenchmarkImages": LIST_IMAGES,
            "podContainerStartBenchmarkTimeoutSeconds": 5}


def run_benchmark(endpoint: str, out: Path, params_file: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    argv = [str(TOOLS / "critest"), "-benchmark", "-runtime-endpoint", endpoint, "-image-endpoint", endpoint,
            "-config", "/dev/null", "-benchmarking-params-file", str(params_file),
            "-benchmarking-output-dir", str(out), "-ginkgo.json-report", str(out / "ginkgo.json"),
            "-ginkgo.no-color"]
    t0 = time.monotonic()
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    (out / "critest.out").write_text(cp.stdout + cp.stderr)
    if cp.returncode != 0:
        print(f"critest -benchmark failed against {endpoint} (see {out}/critest.out):\n{(cp.stdout + cp.stderr)[-1500:]}")
    results: dict[str, list[float]] = {}
    for name in ("pod_benchmark_data.json", "container_benchmark_data.json", "image_lifecycle_benchmark_data.json",
                 "image_listing_benchmark_data.json"):
        path = out / name
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        for point in doc.get("datapoints") or []:
            for op, ns in zip(doc["operationsNames"], point["operationsDurationsNs"]):
                results.setdefault(op, []).append(ns / 1e6)
    try:
        for suite in json.loads((out / "ginkgo.json").read_text()):
            for spec in suite["SpecReports"]:
                for entry in spec.get("ReportEntries") or []:
                    value = json.loads(entry.get("Value", {}).get("AsJSON") or "{}")
                    for m in value.get("Measurements") or []:
                        durations = m.get("Durations") or []  # gmeasure: nanoseconds
                        if durations:
                            results.setdefault(m["Name"], []).extend(d / 1e6 for d in durations)
    except (OSError, ValueError, KeyError):
        pass
    results["(critest run, whole, in s)"] = [time.monotonic() - t0]
    return results


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=40)
    ap.add_argument("--containers", type=int, default=40)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--only", choices=["pypod", "containerd"])
    ap.add_argument("--keep", metavar="DIR", type=Path, help="work in DIR and keep the raw results there")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    work = a.keep or Path(tempfile.mkdtemp(prefix="pypod-bench-cri-"))
    work.mkdir(parents=True, exist_ok=True)
    pfile = work / "params.yaml"
    pfile.write_text(json.dumps(params(a.pods, a.containers, a.images)))  # JSON is YAML
    built = cri_images.build_all(work / "images")
    registry = Registry(workdir=work / "registry")
    registry.start()
    results: dict[str, dict] = {}
    loads = [f"start {loadavg()}"]
    try:
        cri_images.push_all(registry, built)
        if a.only in (None, "pypod"):
            from pypod.stage1 import conmon

            conmon.become_subreaper()
            with CriEnv(work / "pypod", registry=registry) as env:
                results["pypod"] = run_benchmark(env.endpoint, work / "out-pypod", pfile)
            loads.append(f"after pypod {loadavg()}")
        if a.only in (None, "containerd"):
            ctd = Containerd(work / "containerd", registry.host)
            try:
                ctd.start()
                results["containerd"] = run_benchmark(ctd.endpoint, work / "out-containerd", pfile)
            finally:
                ctd.stop()
            loads.append(f"after containerd {loadavg()}")
    finally:
        registry.stop()
    ops = sorted({op for r in results.values() for op in r}, key=lambda o: (o.startswith("("), o))
    names = list(results)
    head = "| operation | " + " | ".join(f"{n} p50 | {n} p90" for n in names) + \
        (" | pypod/containerd (p50) |" if len(names) == 2 else " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for op in ops:
        cells = []
        for n in names:
            v = results[n].get(op)
            cells += [f"{statistics.median(v):.1f}", f"{_p(v, 0.9):.1f}"] if v else ["-", "-"]
        row = f"| {op} (n={max(len(r.get(op, [])) for r in results.values())}) | " + " | ".join(cells)
        if len(names) == 2 and all(results[n].get(op) for n in names):
            ratio = statistics.median(results["pypod"][op]) / statistics.median(results["containerd"][op])
            row += f" | {ratio:.2f}x"
        print(row + " |")
    print(f"\nms (critest wall time in s); load average {'; '.join(loads)}; raw data in {work}")
    if not a.keep:
        shutil.rmtree(work / "pypod", ignore_errors=True)
        shutil.rmtree(work / "containerd", ignore_errors=True)
        shutil.rmtree(work / "registry", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
