"""Run the real ``pypod`` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class Pypod:
    """``pypod --dir DATA --config-dir CONFIG ...`` with its own data and config dirs."""

    def __init__(self, data_dir: Path, config_dir: Path | None = None):
        self.data_dir = data_dir
        self.config_dir = config_dir or data_dir.parent / (data_dir.name + "-etc")
        self.config_dir.mkdir(parents=True, exist_ok=True)

    def configure(self, text: str) -> None:
        (self.config_dir / "pypod.toml").write_text(text)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> Result:
        cmd = [sys.executable, "-m", "pypod.cli", "--dir", str(self.data_dir), "--config-dir",
               str(self.config_dir), *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, env=env)
        r = Result(p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise AssertionError(f"pypod {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
        return r
