"""crictl against pypod-cri: the commands a person uses on a node, and a restart of pypod-cri
under running pods."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

pytestmark = pytest.mark.root

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
NGINX = "registry.k8s.io/e2e-test-images/nginx:1.14-2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pod(cri, tmp_path):
    """A sandbox with a busybox container writing a line a second, and an nginx container."""
    logs = tmp_path / "logs"
    hostport = _free_port()
    pod_cfg = tmp_path / "pod.json"
    pod_cfg.write_text(json.dumps({
        "metadata": {"name": "smoke", "namespace": "default", "uid": "smoke-uid", "attempt": 0},
        "hostname": "smoke-host", "log_directory": str(logs), "labels": {"app": "smoke"},
        "port_mappings": [{"container_port": 80, "host_port": hostport}], "linux": {}}))
    ctr_cfg = tmp_path / "busybox.json"
    ctr_cfg.write_text(json.dumps({
        "metadata": {"name": "ticker"}, "image": {"image": BUSYBOX}, "log_path": "ticker/0.log",
        "command": ["sh", "-c", "echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"],
        "labels": {"role": "ticker"}, "linux": {}}))
    web_cfg = tmp_path / "nginx.json"
    web_cfg.write_text(json.dumps({"metadata": {"name": "web"}, "image": {"image": NGINX},
                                   "log_path": "web/0.log", "linux": {}}))
    for image in (BUSYBOX, NGINX):
        cri.crictl("pull", image)
    pod_id = cri.crictl("runp", str(pod_cfg)).stdout.strip()
    try:
        ticker = cri.crictl("create", pod_id, str(ctr_cfg), str(pod_cfg)).stdout.strip()
        web = cri.crictl("create", pod_id, str(web_cfg), str(pod_cfg)).stdout.strip()
        cri.crictl("start", ticker, web)
        yield {"pod": pod_id, "ticker": ticker, "web": web, "hostport": hostport, "logs": logs}
    finally:
        cri.crictl("rmp", "-f", pod_id, check=False)


def _wait(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def _http(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return r.read().decode()


def test_pods_ps_inspect_logs(cri, pod):
    pods = cri.crictl("pods", "-o", "json").stdout
    assert pod["pod"] in pods and '"SANDBOX_READY"' in pods
    ps = json.loads(cri.crictl("ps", "-o", "json").stdout)["containers"]
    assert {c["metadata"]["name"] for c in ps} == {"ticker", "web"}
    assert all(c["state"] == "CONTAINER_RUNNING" for c in ps)
    assert [c["id"] for c in json.loads(cri.crictl("ps", "--label", "role=ticker", "-o", "json").stdout)["containers"]] \
        == [pod["ticker"]]
    info = json.loads(cri.crictl("inspect", pod["ticker"]).stdout)["status"]
    assert info["logPath"] == str(pod["logs"] / "ticker" / "0.log")
    assert info["imageId"].startswith("sha256:") and info["image"]["image"] == BUSYBOX
    sb = json.loads(cri.crictl("inspectp", pod["pod"]).stdout)["status"]
    assert sb["network"]["ip"] and sb["metadata"]["name"] == "smoke"
    assert _wait(lambda: "tick 2" in cri.crictl("logs", pod["ticker"]).stdout)
    assert "started" in cri.crictl("logs", "--tail", "100", pod["ticker"]).stdout
    short = pod["ticker"][:13]  # crictl's short ids work too
    assert json.loads(cri.crictl("inspect", short).stdout)["status"]["id"] == pod["ticker"]


def test_exec(cri, pod):
    assert cri.crictl("exec", "-s", pod["ticker"], "echo", "sync").stdout.strip() == "sync"  # crictl adds newlines
    out = cri.crictl("exec", pod["ticker"], "sh", "-c", "echo streamed; echo oops >&2; hostname")
    assert out.stdout == "streamed\nsmoke-host\n" and "oops" in out.stderr
    failed = cri.crictl("exec", pod["ticker"], "sh", "-c", "exit 7", check=False)
    assert failed.returncode != 0 and "exit code 7" in failed.stderr
    assert cri.crictl("exec", "-i", pod["ticker"], "cat", input="from stdin\n").stdout == "from stdin\n"
    ws = cri.crictl("exec", "--transport", "websocket", "-i", pod["ticker"], "cat", input="over ws\n")
    assert ws.stdout == "over ws\n"
    tty = subprocess.run(["script", "-qec", " ".join([*cri.crictl_argv(), "exec", "-it", pod["ticker"],
                                                      "sh", "-c", "'stty size; tty'"]), "/dev/null"],
                         capture_output=True, text=True, timeout=60)
    assert "/dev/pts/" in tty.stdout, tty


def test_port_forward_and_host_port(cri, pod):
    assert "pypod test nginx" in _wait(lambda: _try_http(pod["hostport"]))
    local = _free_port()
    pf = subprocess.Popen([*cri.crictl_argv(), "port-forward", pod["pod"], f"{local}:80"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "pypod test nginx" in _wait(lambda: _try_http(local))
        assert "pypod test nginx" in _http(local)  # a second connection on the same session
    finally:
        pf.terminate()
        pf.wait(10)


def _try_http(port: int) -> str:
    try:
        return _http(port)
    except OSError:
        return ""


def test_stats(cri, pod):
    stats = json.loads(cri.crictl("stats", "-o", "json").stdout)["stats"]
    mine = {s["attributes"]["id"]: s for s in stats}
    assert pod["ticker"] in mine and int(mine[pod["ticker"]]["memory"]["workingSetBytes"]["value"]) > 0
    podstats = json.loads(cri.crictl("statsp", "-o", "json").stdout)["stats"]
    assert any(s["attributes"]["id"] == pod["pod"] for s in podstats)


def test_images_pull_rmi(cri):
    name = "gcr.io/k8s-staging-cri-tools/test-image-tags:1"
    cri.crictl("pull", name)
    for tag in ("2", "3"):
        cri.crictl("pull", f"gcr.io/k8s-staging-cri-tools/test-image-tags:{tag}")
    images = json.loads(cri.crictl("images", "-o", "json").stdout)["images"]
    img = next(i for i in images if name in i["repoTags"])
    assert len(img["repoTags"]) == 3 and img["repoDigests"]
    user = json.loads(cri.crictl("inspecti", "gcr.io/k8s-staging-cri-tools/test-image-tags:2").stdout)
    assert user["status"]["id"] == img["id"]
    cri.crictl("rmi", name)  # one tag removes the image with all its tags
    images = json.loads(cri.crictl("images", "-o", "json").stdout)["images"]
    assert not any(i["id"] == img["id"] for i in images)
    assert cri.crictl("rmi", name, check=False).returncode != 0  # gone


def test_stop_rm_and_events(cri, pod):
    cri.crictl("stop", "-t", "5", pod["ticker"])
    st = json.loads(cri.crictl("inspect", pod["ticker"]).stdout)["status"]
    assert st["state"] == "CONTAINER_EXITED" and st["exitCode"] == 143 and st["reason"] == "Error"
    cri.crictl("stop", pod["ticker"])  # again: no error
    cri.crictl("rm", pod["ticker"])
    assert pod["ticker"] not in cri.crictl("ps", "-a", "-q").stdout
    cri.crictl("stopp", pod["pod"])
    assert '"SANDBOX_NOTREADY"' in cri.crictl("inspectp", pod["pod"]).stdout
    cri.crictl("rmp", pod["pod"])
    assert pod["pod"] not in cri.crictl("pods", "-q").stdout


def test_restart_keeps_everything(cri, pod):
    before = json.loads(cri.crictl("ps", "-o", "json").stdout)["containers"]
    cri.stop_server()
    cri.start_server()
    after = json.loads(cri.crictl("ps", "-o", "json").stdout)["containers"]
    assert {(c["id"], c["state"]) for c in after} == {(c["id"], c["state"]) for c in before}
    assert cri.crictl("exec", pod["ticker"], "echo", "still here").stdout == "still here\n"
    assert pod["pod"] in cri.crictl("pods", "-q").stdout
