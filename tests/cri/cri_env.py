"""A running pypod-cri for the CRI tests and benchmarks: its own data and config dirs, a local
``docker-registry`` holding every image critest uses (:mod:`cri_images`), registry rewrites that
serve critest's image names from it, and the built crictl and critest.

    with CriEnv(workdir) as env:
        env.crictl("pods")
        env.critest("-ginkgo.focus", "PodSandbox")

On exit every sandbox is removed (through CRI, then whatever is left through the pypod CLI),
pypod-cri and the registry are stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("PYPOD_TOOLS_DIR", REPO / ".tools")) / "bin"
PYTHON = sys.executable
CRI_BIN = str(Path(PYTHON).with_name("pypod-cri"))
PYPOD_BIN = str(Path(PYTHON).with_name("pypod"))


def tools_available() -> str | None:
    """Why crictl/critest cannot run here, or None."""
    for tool in ("crictl", "critest"):
        if not os.access(TOOLS / tool, os.X_OK):
            return f"{TOOLS / tool} is missing: run tests/cri/build_tools.sh (make test does)"
    return None


class CriEnv:
    def __init__(self, workdir: Path, *, cache: Path | None = None, log_level: str = "info", registry=None):
        """``registry``: a started :class:`support.registry.Registry` with the images pushed
        (:func:`cri_images.push_all`) to use instead of starting one (it is not stopped)."""
        self.workdir = Path(workdir)
        self._own_registry = registry is None
        self.cache = Path(cache or self.workdir / "images")
        self.data_dir = self.workdir / "data"
        self.config_dir = self.workdir / "etc"
        self.socket = self.workdir / "cri.sock"
        self.log_path = self.workdir / "pypod-cri.log"
        self.log_level = log_level
        self.registry = registry
        self.proc: subprocess.Popen | None = None
        self.built = []

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "CriEnv":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        import cri_images
        from support.registry import Registry

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._own_registry:
            self.built = cri_images.build_all(self.cache)
            self.registry = Registry(workdir=self.workdir / "registry")
            self.registry.start()
            cri_images.push_all(self.registry, self.built)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "pypod.toml").write_text(
            f'data_dir = "{self.data_dir}"\n\n'
            f'[cri]\nlisten = "{self.socket}"\n\n' + cri_images.registries_toml(self.registry.host))
        self.start_server()

    def start_server(self) -> None:
        env = dict(os.environ, PYPOD_CONFIG_DIR=str(self.config_dir))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([CRI_BIN, "--log-level", self.log_level], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pypod-cri exited ({self.proc.returncode}): {self.log()[-2000:]}")
            if self.socket.exists():
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(str(self.socket))
                    return
                except OSError:
                    pass
                finally:
                    s.close()
            time.sleep(0.05)
        raise RuntimeError(f"pypod-cri did not listen on {self.socket}: {self.log()[-2000:]}")

    def stop_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.remove_all()
        finally:
            self.stop_server()
            self.cleanup_pods()
            if self.registry is not None and self._own_registry:
                self.registry.stop()
                self.registry = None

    def remove_all(self) -> None:
        """Remove every sandbox through CRI (what a kubelet would do)."""
        out = self.crictl("pods", "-q", check=False).stdout.split()
        for pod in out:
            self.crictl("rmp", "-f", pod, check=False)

    def cleanup_pods(self) -> None:
        """Whatever CRI left behind, through the pypod CLI (stop, then gc at once)."""
        if not self.data_dir.exists():
            return
        cli = [PYPOD_BIN, "--dir", str(self.data_dir), "--config-dir", str(self.config_dir)]
        listed = subprocess.run([*cli, "list", "--format", "json"], capture_output=True, text=True)
        try:
            pods = json.loads(listed.stdout or "[]")
        except ValueError:
            pods = []
        for pod in pods:
            if pod.get("state") == "running":
                subprocess.run([*cli, "stop", "--force", pod["uuid"]], capture_output=True)
        subprocess.run([*cli, "gc", "--grace-period", "0s", "--expire-prepared", "0s"], capture_output=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- tools ----------------------------------------------------------------------------------
    def crictl_argv(self) -> list[str]:
        return [str(TOOLS / "crictl"), "--config", "/dev/null", "-r", self.endpoint, "-i", self.endpoint,
                "--timeout", "60s"]

    def crictl(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
               ) -> subprocess.CompletedProcess:
        cp = subprocess.run([*self.crictl_argv(), *args],
                            capture_output=True, text=True, timeout=timeout, input=input)
        if check and cp.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed ({cp.returncode}): {cp.stderr}")
        return cp

    def critest_argv(self, *args: str) -> list[str]:
        return [str(TOOLS / "critest"), "-runtime-endpoint", self.endpoint, "-image-endpoint", self.endpoint,
                "-config", "/dev/null", *args]


def main() -> int:
    """``python tests/cri/cri_env.py WORKDIR``: bring the environment up and wait (for hand tests)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pypod-cri-env")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with CriEnv(work, log_level="debug") as env:
        print(f"endpoint {env.endpoint}; registry {env.registry.host}; log {env.log_path}", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    shutil.rmtree(work / "registry", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
