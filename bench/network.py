"""Network setup + teardown per pod: pypod vs the same CNI plugins called directly, same config.

    .venv/bin/python bench/network.py [--runs 20] [--rounds 3] [--only NAME]

Each contender, per iteration, makes a network namespace with ``lo`` up, ADDs the network
(every plugin in order, each given the previous result), DELs it (every plugin in reverse order,
given the final result) and removes the namespace:

- pypod: ``pypod.network.attach(pod, None, [network], state_file=...)`` then ``detach(...)``, in
  process (the namespace from a thread + unshare + bind mount; the state file and the CNI cache are
  written before and after every plugin);
- direct: one bash process looping over the same plugin binaries with the same configuration on
  stdin (``unshare --net=FILE ip link set lo up`` for the namespace, the result chained into
  ``prevResult`` with bash string operations, ``umount`` + ``rm`` at the end).

Networks (both sides read the same conflist): ``bridge`` (bridge + host-local), ``bridge-masq``
(the same with ipMasq), ``default`` (pypod's default network: bridge with ipMasq and hairpin,
portmap, firewall) and ``default+port`` (the same with one port mapping). Rounds alternate the
contenders; medians over all iterations, after one warm-up each. Runs as root; uses its own bridge
names (pypodb-*) and subnet (172.27.0.0/16 range) and puts the host back as it found it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PLUGIN_DIR = "/usr/lib/cni"


def networks() -> dict[str, tuple[dict, list[dict]]]:
    """name -> (conflist, port mappings)."""
    import pypod.network as net

    def ipam(subnet: str) -> dict:
        return {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}

    def conflist(name: str, plugins: list[dict]) -> dict:
        return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}

    default = net.default_network_config("172.27.2.0/24", "pypodb-df0")
    default["name"] = "pypodb-default"
    port = [{"hostPort": 18765, "containerPort": 80, "protocol": "tcp"}]
    return {
        "bridge": (conflist("pypodb-bridge", [{"type": "bridge", "bridge": "pypodb-br0", "isGateway": True,
                                                "ipam": ipam("172.27.0.0/24")}]), []),
        "bridge-masq": (conflist("pypodb-masq", [{"type": "bridge", "bridge": "pypodb-mq0", "isGateway": True,
                                                  "ipMasq": True, "ipam": ipam("172.27.1.0/24")}]), []),
        "default": (default, []),
        "default+port": (default, port),
    }


def direct_script(conf: dict, ports: list[dict], workdir: Path, runs: int) -> str:
    """A bash loop running the plugins by hand; prints ``start end`` ($EPOCHREALTIME) per iteration."""
    stdins = []
    for p in conf["plugins"]:
        d = {k: v for k, v in p.items() if k != "capabilities"}
        d["cniVersion"], d["name"] = conf["cniVersion"], conf["name"]
        if ports and (p.get("capabilities") or {}).get("portMappings"):
            d["runtimeConfig"] = {"portMappings": ports}
        stdins.append((p["type"], json.dumps(d)))
    add, dele = [], []
    for i, (typ, stdin) in enumerate(stdins):
        add.append(f"c={shq(stdin)}")
        add.append('[ -n "$res" ] && c="${c%\\}},\\"prevResult\\":$res}"' if i else ":")
        add.append(f'res=$(printf %s "$c" | {PLUGIN_DIR}/{typ})')
    for typ, stdin in reversed(stdins):
        dele.append(f"c={shq(stdin)}")
        dele.append('c="${c%\\}},\\"prevResult\\":$res}"')
        dele.append(f'printf %s "$c" | {PLUGIN_DIR}/{typ} >/dev/null')
    body = "\n  ".join(["export CNI_COMMAND=ADD", 'res=""', *add, "export CNI_COMMAND=DEL", *dele])
    return f"""set -e
export CNI_PATH={PLUGIN_DIR} CNI_IFNAME=eth0 PATH=/usr/sbin:/usr/bin:/sbin:/bin
for i in $(seq 1 {runs}); do
  t0=$EPOCHREALTIME
  ns={workdir}/ns-$i
  : > "$ns"
  unshare --net="$ns" ip link set lo up
  export CNI_CONTAINERID=direct-$i CNI_NETNS="$ns"
  {body}
  umount "$ns"; rm -f "$ns"
  echo "$t0 $EPOCHREALTIME"
done
"""


def shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def run_direct(conf: dict, ports: list[dict], workdir: Path, runs: int) -> list[float]:
    script = direct_script(conf, ports, workdir, runs)
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"direct run failed: {p.stderr[-800:]}")
    return [float(b) - float(a) for a, b in (ln.split() for ln in p.stdout.splitlines())]


def run_pypod(settings, name: str, ports: list[dict], workdir: Path, runs: int) -> list[float]:
    import pypod.network as net

    times = []
    for i in range(runs):
        sf = workdir / f"pod-{i}.json"
        t0 = time.perf_counter()
        net.attach(f"bench-{i}", None, [net.NetworkRequest(name)], state_file=sf, ports=ports, settings=settings)
        net.detach(f"bench-{i}", None, sf, settings=settings)
        times.append(time.perf_counter() - t0)
    return times


def _nft_tables() -> set[str]:
    if not shutil.which("nft"):
        return set()
    return set(subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.splitlines())


def host_snapshot() -> dict:
    save = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return {"tables": _nft_tables(), "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            "scaffold": ":CNI-HOSTPORT-DNAT" in save or ":CNI-FORWARD" in save,
            "cni": Path("/var/lib/cni").exists()}


def restore_host(before: dict, names: list[str]) -> None:
    """Remove what the benchmark made, where unused: its bridges, IPAM dirs, the plugins' shared
    chains and nft tables if they were not there before, ip_forward if the plugins turned it on."""
    import pypod.network as net

    for br in ("pypodb-br0", "pypodb-mq0", "pypodb-df0"):
        net.prune(net.NetSettings(default_bridge=br), ipam=False)
    for n in names:
        d = Path("/var/lib/cni/networks", n)
        if d.is_dir() and not [f for f in os.listdir(d) if f != "lock" and not f.startswith("last_reserved")]:
            shutil.rmtree(d)
    if not before["cni"]:
        for d in (Path("/var/lib/cni/networks"), Path("/var/lib/cni")):
            if d.is_dir() and not os.listdir(d):
                d.rmdir()
    if not before["scaffold"]:
        net.prune(bridge=False, ipam=False, chains=True)
    for t in _nft_tables() - before["tables"]:
        listing = subprocess.run(["nft", "list", *t.split()], capture_output=True, text=True).stdout
        if not any(ln.strip() and not ln.strip().startswith(("table ", "chain ", "type ", "}"))
                   for ln in listing.splitlines()):
            subprocess.run(["nft", "delete", *t.split()], capture_output=True)
    veths = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout
    if before["ip_forward"] == "0" and not veths.strip():
        Path("/proc/sys/net/ipv4/ip_forward").write_text("0\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="iterations per round and contender")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", help="network name(s) to run (default: all)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    import pypod.network as net

    nets = networks()
    chosen = args.only or list(nets)
    work = Path(tempfile.mkdtemp(prefix="pypod-bench-net-", dir="/var/tmp"))
    before = host_snapshot()
    settings = net.NetSettings(config_dir=work / "etc", data_dir=work / "data", netns_dir=work / "netns",
                               plugin_paths=(PLUGIN_DIR,))
    settings.net_dir.mkdir(parents=True)
    for conf, _ in nets.values():
        (settings.net_dir / f"10-{conf['name']}.conflist").write_text(json.dumps(conf))
    rows = []
    try:
        for key in chosen:
            conf, ports = nets[key]
            d = work / key
            d.mkdir()
            run_direct(conf, ports, d, 1)                        # warm-up: bridge, chains, IPAM dir
            run_pypod(settings, conf["name"], ports, d, 1)
            direct: list[float] = []
            pypod: list[float] = []
            for _ in range(args.rounds):
                direct += run_direct(conf, ports, d, args.runs)
                pypod += run_pypod(settings, conf["name"], ports, d, args.runs)
            md, mp = statistics.median(direct) * 1000, statistics.median(pypod) * 1000
            rows.append((key, " + ".join(p["type"] for p in conf["plugins"]) + (" (1 port)" if ports else ""),
                         md, mp, mp / md))
            print(f"{key:13s} direct {md:6.1f} ms   pypod {mp:6.1f} ms   ratio {mp / md:4.2f}", flush=True)
    finally:
        restore_host(before, [nets[k][0]["name"] for k in nets])
        shutil.rmtree(work, ignore_errors=True)
    n = args.runs * args.rounds
    print(f"\nmedian of {n} setup+teardown cycles each (netns + ADD + DEL + netns removal)")
    print("| network | plugins | direct (bash loop) | pypod attach+detach | ratio |")
    print("|---|---|---|---|---|")
    for key, plugins, md, mp, r in rows:
        print(f"| {key} | {plugins} | {md:.1f} ms | {mp:.1f} ms | {r:.2f}x |")


if __name__ == "__main__":
    main()
