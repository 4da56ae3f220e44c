"""pypod's configuration: where state lives, limits, registries.

The one file is ``$PYPOD_CONFIG_DIR/pypod.toml`` (default ``/etc/pypod/pypod.toml``)::

    data_dir = "/var/lib/pypod"
    auth_file = "/etc/pypod/auth.json"      # Docker-style {"auths": {...}}
    runtime = "crun"                        # default OCI runtime (else probed: crun, then runc)
    log_size_max = "10MiB"                  # apps' CRI logs are truncated past this size

    [network]
    plugin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
    default_subnet = "172.30.0.0/16"

    [cri]                                   # pypod-cri (see pypod.kubelet.config)
    listen = "/run/pypod/cri.sock"

    [limits]
    max_layer_unpacked = "64GiB"            # per layer, against decompression bombs
    max_layer_entries = 2000000
    max_manifest = "4MiB"

    [[registry]]                            # in the spirit of containers-registries.conf v2
    prefix = "registry.k8s.io"              # a host, or host/path prefix of references
    location = "127.0.0.1:5000/k8s"         # rewrite the prefix to this (optional)
    insecure = true                         # plain HTTP (or unverified TLS) allowed
    ca_file = "/etc/pypod/certs/ca.pem"     # extra CA for this host
      [[registry.mirror]]                   # tried in order before the location
      location = "127.0.0.1:5001"
      insecure = true
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

DEFAULT_DATA_DIR = "/var/lib/pypod"
DEFAULT_CONFIG_DIR = "/etc/pypod"

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


def parse_size(value: str | int) -> int:
    """Parse ``512MiB``, ``2G``, ``1000`` into bytes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"invalid size {value!r} (expected e.g. 512MiB, 2G, 1000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class Limits:
    """Bounds on untrusted image content."""

    max_manifest: int = 4 << 20
    max_config: int = 8 << 20
    max_layer_unpacked: int = 64 << 30
    max_layer_entries: int = 2_000_000
    max_path: int = 4096


@dataclass
class Endpoint:
    """One place to reach a registry: a host[:port] with an optional path prefix."""

    location: str
    insecure: bool = False
    ca_file: str | None = None


@dataclass
class RegistryConfig:
    prefix: str
    location: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    mirrors: list[Endpoint] = field(default_factory=list)


@dataclass
class Config:
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    config_dir: Path = Path(DEFAULT_CONFIG_DIR)
    auth_file: Path | None = None
    limits: Limits = field(default_factory=Limits)
    registries: list[RegistryConfig] = field(default_factory=list)
    pull_concurrency: int = 4
    runtime: str | None = None
    log_size_max: int | None = None         # apps' CRI logs are truncated past this (conmon)
    network: dict = field(default_factory=dict)  # [network]: plugin_dirs, default_subnet
    cri: dict = field(default_factory=dict)      # [cri]: pypod-cri's settings (pypod.kubelet.config)
    insecure: frozenset[str] = frozenset()  # checks skipped for this command (--insecure-options)

    def registry_for(self, name: str) -> RegistryConfig | None:
        """The registry entry whose prefix matches ``name`` (host/path), longest prefix first."""
        best = None
        for reg in self.registries:
            p = reg.prefix.rstrip("/")
            if name == p or name.startswith(p + "/"):
                if best is None or len(p) > len(best.prefix.rstrip("/")):
                    best = reg
        return best


def load(data_dir: str | os.PathLike | None = None, config_dir: str | os.PathLike | None = None) -> Config:
    """Build the configuration from defaults, the config file, the environment and flags (in that order)."""
    cdir = Path(config_dir or os.environ.get("PYPOD_CONFIG_DIR") or DEFAULT_CONFIG_DIR)
    cfg = Config(config_dir=cdir)
    path = cdir / "pypod.toml"
    if path.exists():
        _apply_file(cfg, path)
    env_dir = os.environ.get("PYPOD_DIR")
    if data_dir or env_dir:
        cfg.data_dir = Path(data_dir or env_dir)  # type: ignore[arg-type]
    if os.environ.get("PYPOD_AUTH_FILE"):
        cfg.auth_file = Path(os.environ["PYPOD_AUTH_FILE"])
    return cfg


def _apply_file(cfg: Config, path: Path) -> None:
    import tomllib

    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: {e}") from None
    known = {"data_dir", "auth_file", "limits", "registry", "pull_concurrency", "runtime", "log_size_max",
             "network", "cri"}
    unknown = set(raw) - known
    if unknown:
        raise UsageError(f"{path}: unknown setting(s): {', '.join(sorted(unknown))}")
    if "data_dir" in raw:
        cfg.data_dir = Path(raw["data_dir"])
    if "auth_file" in raw:
        cfg.auth_file = Path(raw["auth_file"])
    if "pull_concurrency" in raw:
        cfg.pull_concurrency = max(1, int(raw["pull_concurrency"]))
    if "runtime" in raw:
        cfg.runtime = str(raw["runtime"])
    if "log_size_max" in raw:
        cfg.log_size_max = parse_size(raw["log_size_max"]) or None
    if "network" in raw:
        unknown_net = set(raw["network"]) - {"plugin_dirs", "default_subnet"}
        if unknown_net:
            raise UsageError(f"{path}: unknown [network] setting(s): {', '.join(sorted(unknown_net))}")
        cfg.network = dict(raw["network"])
    if "cri" in raw:
        if not isinstance(raw["cri"], dict):
            raise UsageError(f"{path}: [cri] must be a table")
        cfg.cri = dict(raw["cri"])
    for key, value in raw.get("limits", {}).items():
        if not hasattr(cfg.limits, key):
            raise UsageError(f"{path}: unknown limit {key!r}")
        setattr(cfg.limits, key, parse_size(value))
    for i, reg in enumerate(raw.get("registry", [])):
        if "prefix" not in reg:
            raise UsageError(f"{path}: registry[{i}] has no prefix")
        mirrors = [Endpoint(m["location"], bool(m.get("insecure", False)), m.get("ca_file"))
                   for m in reg.get("mirror", [])]
        cfg.registries.append(RegistryConfig(
            prefix=reg["prefix"], location=reg.get("location"), insecure=bool(reg.get("insecure", False)),
            ca_file=reg.get("ca_file"), mirrors=mirrors))


# --insecure-options, in rkt's names: what each skips for one command
INSECURE_OPTIONS = {
    "image": "image signature verification (the trust policy's \"signed\" rules)",
    "tls": "TLS certificate verification of registries (still HTTPS)",
}
_INSECURE_GROUPS = {"all-fetch": ("image", "tls"), "all": tuple(INSECURE_OPTIONS)}


def parse_insecure_options(text: str | None) -> frozenset[str]:
    """``image,tls`` -> {"image", "tls"}; ``none``, ``all-fetch`` and ``all`` as in rkt."""
    out: set[str] = set()
    for word in (w.strip() for w in (text or "").split(",")):
        if not word or word == "none":
            continue
        if word in _INSECURE_GROUPS:
            out.update(_INSECURE_GROUPS[word])
        elif word in INSECURE_OPTIONS:
            out.add(word)
        else:
            known = ", ".join(["none", *INSECURE_OPTIONS, *_INSECURE_GROUPS])
            raise UsageError(f"--insecure-options: unknown option {word!r} (known: {known})")
    return frozenset(out)


def parse_duration(value: str) -> float:
    """Parse ``30m``, ``24h``, ``1h30m``, ``90s``, ``0`` or a bare number of seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        raise UsageError(f"invalid duration {value!r} (expected e.g. 30s, 10m, 24h, 1h30m)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)
