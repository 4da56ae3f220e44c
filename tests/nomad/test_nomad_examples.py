"""examples/nomad: every key of the agent's plugin config and of the jobs' task configs is one the
plugin's schemas declare (what Nomad's hcldec would check when the agent or the job is loaded)."""

from __future__ import annotations

import re
from pathlib import Path

from pypod.nomad import schema

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "nomad"


def _block_keys(text: str, block: str) -> list[set[str]]:
    """Top-level keys of each ``block { ... }`` (nested blocks count as keys), comments removed."""
    text = re.sub(r"#[^\n]*", "", text)
    out = []
    for m in re.finditer(rf"(?m)^\s*{block}\s*\{{", text):
        depth, i, keys = 1, m.end(), set()
        line_start = True
        while depth and i < len(text):
            c = text[i]
            if depth == 1 and line_start:
                km = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*[={]", text[i:])
                if km:
                    keys.add(km.group(1))
            line_start = c == "\n"
            depth += {"{": 1, "}": -1}.get(c, 0)
            i += 1
        out.append(keys)
    return out


def test_agent_config_uses_the_config_schema():
    text = (EXAMPLES / "agent.hcl").read_text()
    assert 'plugin "nomad-driver-pypod"' in text
    (keys,) = _block_keys(text, "config")
    assert keys and keys <= set(schema.AGENT), keys - set(schema.AGENT)


def test_jobs_use_the_task_schema():
    jobs = sorted(EXAMPLES.glob("*.nomad.hcl"))
    assert {j.name for j in jobs} >= {"batch.nomad.hcl", "service.nomad.hcl", "shared-network.nomad.hcl"}
    for job in jobs:
        text = job.read_text()
        assert 'driver = "pypod"' in text, job.name
        blocks = _block_keys(text, "config")
        assert blocks, job.name
        for keys in blocks:
            assert "image" in keys and keys <= set(schema.TASK), (job.name, keys - set(schema.TASK))
