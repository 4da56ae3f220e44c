"""The plugin's two config schemas (agent ``plugin "..." { config {} }`` and the job's task
``config {}``) as hclspec messages, and the decoding of what Nomad sends back: the cty value
msgpack-encoded, a map holding every attribute of the schema (``None`` when unset).

A schema is written once as data (:data:`AGENT`, :data:`TASK`): each attribute has an HCL type
(``string``, ``bool``, ``number``, ``list(string)``, ``map(string)``) or is a block with its own
attributes, and optionally a default (an HCL literal). :func:`spec` turns it into the hclspec
proto; :func:`decode` checks a decoded msgpack map against it and raises :class:`ConfigError`
naming the field for unknown or mistyped values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config value Nomad sent does not fit the schema (the message names the field)."""


@dataclass
class A:
    """An attribute: ``type`` is an HCL type expression; ``default`` an HCL literal."""

    type: str
    required: bool = False
    default: str | None = None
    value: Any = None  # the Python value of ``default`` (what decode fills in when unset)


@dataclass
class B:
    """A block (``block_value``: at most one), with nested attributes."""

    attrs: dict[str, A] = field(default_factory=dict)
    required: bool = False


AGENT: dict[str, A | B] = {
    "data_dir": A("string", default='""', value=""),  # "": pypod's (config file, /var/lib/pypod)
    "config_dir": A("string", default='""', value=""),
    "runtime": A("string", default='""', value=""),  # crun | runc | "": probed
    "default_network": A("string", default='"default"', value="default"),
    "allowed_caps": A("list(string)", default='["audit_write","chown","dac_override","fowner","fsetid","kill",'
                      '"mknod","net_bind_service","net_raw","setfcap","setgid","setpcap","setuid","sys_chroot"]',
                      value=["audit_write", "chown", "dac_override", "fowner", "fsetid", "kill", "mknod",
                             "net_bind_service", "net_raw", "setfcap", "setgid", "setpcap", "setuid",
                             "sys_chroot"]),
    "allow_privileged": A("bool", default="false", value=False),
    "allow_host_volumes": A("bool", default="false", value=False),
    "image_pull_timeout": A("string", default='"5m"', value="5m"),
    "gc": B({"container": A("bool", default="true", value=True)}),
}

TASK: dict[str, A | B] = {
    "image": A("string", required=True),
    "command": A("string"),
    "args": A("list(string)"),
    "entrypoint": A("list(string)"),
    "working_dir": A("string"),
    "ports": A("list(string)"),
    "volumes": A("list(string)"),
    "mount": B({"type": A("string", default='"bind"', value="bind"), "source": A("string"),
                "target": A("string", required=True), "readonly": A("bool", default="false", value=False)}),
    "cap_add": A("list(string)"),
    "cap_drop": A("list(string)"),
    "readonly_rootfs": A("bool"),
    "privileged": A("bool"),
    "hostname": A("string"),
    "sysctls": A("map(string)"),
    "labels": A("map(string)"),
    "auth": B({"username": A("string"), "password": A("string")}),
    "force_pull": A("bool"),
    "network_mode": A("string"),
}


def spec(schema: dict[str, A | B]):
    """The hclspec ``Spec`` (an object of attributes and blocks) for ``schema``."""
    from .proto import hclspec_pb2 as H

    def attr(name: str, a: A):
        s = H.Spec(Attr=H.Attr(name=name, type=a.type, required=a.required))
        if a.default is not None:
            s = H.Spec(default=H.Default(primary=s, default=H.Spec(literal=H.Literal(value=a.default))))
        return s

    out = {}
    for name, item in schema.items():
        if isinstance(item, A):
            out[name] = attr(name, item)
        else:
            nested = H.Spec(object=H.Object(attributes={n: attr(n, a) for n, a in item.attrs.items()}))
            out[name] = H.Spec(block_value=H.Block(name=name, required=item.required, nested=nested))
    return H.Spec(object=H.Object(attributes=out))


def _check(path: str, ty: str, v: Any) -> Any:
    if v is None:
        return None
    if ty == "string":
        if not isinstance(v, str):
            raise ConfigError(f"{path}: expected a string, got {type(v).__name__}")
        return v
    if ty == "bool":
        if not isinstance(v, bool):
            raise ConfigError(f"{path}: expected a bool, got {type(v).__name__}")
        return v
    if ty == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ConfigError(f"{path}: expected a number, got {type(v).__name__}")
        if isinstance(v, str):  # cty sends numbers that fit no float64 as decimal text
            try:
                return float(v) if any(c in v for c in ".eE") else int(v)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {v!r}") from None
        return v
    if ty.startswith("list(") and ty.endswith(")"):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(v).__name__}")
        return [_check(f"{path}[{i}]", ty[5:-1], x) for i, x in enumerate(v)]
    if ty.startswith("map(") and ty.endswith(")"):
        if not isinstance(v, dict):
            raise ConfigError(f"{path}: expected a map, got {type(v).__name__}")
        return {str(k): _check(f"{path}.{k}", ty[4:-1], x) for k, x in v.items()}
    raise ConfigError(f"{path}: unsupported type {ty}")  # pragma: no cover - schema bug


def _object(prefix: str, schema: dict, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a map, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in schema)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field")
    out: dict[str, Any] = {}
    for name, item in schema.items():
        v = data.get(name)
        path = prefix + name
        if isinstance(item, B):
            if isinstance(v, list):  # a block given as a list of one (JSON jobs, HCL1 agent files)
                if len(v) > 1:
                    raise ConfigError(f"{path}: at most one block")
                v = v[0] if v else None
            if v is None:
                if item.required:
                    raise ConfigError(f"{path}: missing required block")
                out[name] = {n: a.value for n, a in item.attrs.items()}  # absent: its defaults
                continue
            out[name] = _object(path + ".", item.attrs, v)
            continue
        v = _check(path, item.type, v)
        if v is None:
            if item.required:
                raise ConfigError(f"{path}: missing required field")
            v = item.value
        out[name] = v
    return out


def decode(schema: dict[str, A | B], data: bytes | None) -> dict[str, Any]:
    """The config Nomad sent (msgpack bytes of the cty value) checked against ``schema``, with
    defaults filled in for unset attributes."""
    import msgpack

    if not data:
        return _object("", schema, {})
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:
        raise ConfigError(f"config: not valid msgpack ({e})") from None
    return _object("", schema, value if value is not None else {})
