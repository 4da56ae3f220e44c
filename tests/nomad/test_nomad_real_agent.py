"""A real Nomad agent, where a binary exists (NOMAD_BIN): the examples' batch job through the
agent's HTTP API (python-nomad). Nomad is not installable from this project's registries (its
releases since 1.7 are not open source and none builds with `go install`), so by default this
skips; the go-plugin harness and the replayed client sequences cover the protocol."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from nomad_harness import PLUGIN

NOMAD_BIN = os.environ.get("NOMAD_BIN")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "nomad"

pytestmark = pytest.mark.skipif(not NOMAD_BIN, reason="NOMAD_BIN not set: no Nomad agent binary on this machine")


@pytest.mark.usefixtures("leak_check")
def test_batch_job_on_a_dev_agent(agent_config, tmp_path):
    import nomad

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    wrapper = plugins / "nomad-driver-pypod"
    wrapper.write_text(f"#!/bin/sh\nexec {PLUGIN} \"$@\"\n")
    wrapper.chmod(0o755)
    cfg = tmp_path / "agent.hcl"
    cfg.write_text((EXAMPLES / "agent.hcl").read_text()
                   .replace('"/opt/nomad/plugins"', f'"{plugins}"')
                   .replace('"/var/lib/pypod"', f'"{agent_config["data_dir"]}"')
                   .replace('gc {', f'config_dir = "{agent_config["config_dir"]}"\n    gc {{'))
    agent = subprocess.Popen([NOMAD_BIN, "agent", "-dev", "-bind=127.0.0.1", f"-plugin-dir={plugins}",
                              f"-config={cfg}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        n = nomad.Nomad(host="127.0.0.1", port=4646, timeout=10)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                nodes = n.nodes.get_nodes()
                if nodes and n.node.get_node(nodes[0]["ID"])["Drivers"].get("pypod", {}).get("Healthy"):
                    break
            except Exception:
                pass
            time.sleep(1)
        else:
            pytest.fail("the agent never reported a healthy pypod driver")
        job = n.jobs.parse((EXAMPLES / "batch.nomad.hcl").read_text(), canonicalize=True)
        n.jobs.register_job({"Job": job})
        deadline = time.monotonic() + 120
        alloc = None
        while time.monotonic() < deadline:
            allocs = n.job.get_allocations(job["ID"])
            if allocs and allocs[0]["ClientStatus"] in ("complete", "failed"):
                alloc = n.allocation.get_allocation(allocs[0]["ID"])
                break
            time.sleep(1)
        assert alloc is not None and alloc["ClientStatus"] == "complete", alloc
        out = n.client.cat.read_file(alloc["ID"], path="alloc/logs/hello.stdout.0")
        assert "hello from hello" in out
        n.job.deregister_job(job["ID"], purge=True)
    finally:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
