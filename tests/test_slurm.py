"""The workflow on a real (one-node) SLURM cluster with configs/profiles/slurm.

tests/slurm/start_slurm.sh installs SLURM when it is missing (apt-get, as root)
and starts munged, slurmctld and slurmd on this machine; the test skips, saying
why, where that cannot be done (not root, no apt-get, a machine with its own
SLURM). The daemons are stopped at the end. The outputs must equal those of a
local run (``tiny_reference`` in conftest.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from workflow_helpers import (
    REPO,
    SCAN,
    TILES_PER_BATCH,
    assert_same_outputs,
    output_of,
    run,
    snakemake_cmd,
    tiny_config,
    tool_env,
    write_config,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1200)]

SCRIPTS = REPO / "tests" / "slurm"
LOCK = Path("/tmp/cellseg-test-slurm.lock")
RULES = ("ingest", "plan", "segment_tiles", "stitch", "measure")


def _free_ports(n: int) -> list[int]:
    """`n` different TCP ports that are free on 127.0.0.1 now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def _exclusive(path: Path, timeout: float):
    """Hold an exclusive lock on `path` (one test cluster per machine at a time)."""
    with open(path, "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another test holds the SLURM test cluster ({path})")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running one-node SLURM cluster: the environment to reach it."""
    state = tmp_path_factory.mktemp("slurm")
    with _exclusive(LOCK, timeout=900):
        ctld_port, slurmd_port = _free_ports(2)
        env = tool_env(SLURMCTLD_PORT=str(ctld_port), SLURMD_PORT=str(slurmd_port))
        try:
            start = subprocess.run(
                ["bash", str(SCRIPTS / "start_slurm.sh"), str(state)],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
        except subprocess.TimeoutExpired:
            subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh"), str(state)], timeout=120)
            pytest.skip("SLURM did not install or start within 15 minutes")
        try:
            if start.returncode != 0:
                why = start.stderr.strip() or start.stdout.strip()
                pytest.skip(f"no SLURM cluster for this test: {why[-1500:]}")
            yield tool_env(SLURM_CONF=str(state / "slurm.conf"))
        finally:
            subprocess.run(
                ["bash", str(SCRIPTS / "stop_slurm.sh"), str(state)],
                capture_output=True,
                timeout=120,
            )


def _group_jobs(text: str) -> list[str]:
    """SLURM job ids of the `segment` group jobs in the workflow's output."""
    return re.findall(r"SLURM jobid (\d+) \(log: \S*group_segment", text)


def test_slurm_profile_matches_a_local_run(tmp_path, slurm_cluster, tiny_scan, tiny_reference):
    # 4 tile batches, segmented one after the other by one grouped cluster job.
    write_config(tmp_path, tiny_config(tiny_scan))
    cmd = snakemake_cmd(
        tmp_path,
        "--profile",
        str(REPO / "configs" / "profiles" / "slurm"),
        "--slurm-no-account",
        "--slurm-keep-successful-logs",
        # The jobs of this tiny run take seconds: look at them soon after submission.
        "--slurm-init-seconds-before-status-checks",
        "1",
        # Small requests fit any test machine; the rules ask for more on real scans.
        "--set-resources",
        *(f"{rule}:mem_mb=1000" for rule in RULES),
        "--",
        f"results/{SCAN}/cells.parquet",
    )
    proc = run(cmd, tmp_path, env=slurm_cluster, timeout=1100)
    assert proc.returncode == 0, output_of(proc)
    text = proc.stdout + proc.stderr

    outdir = tmp_path / "results" / SCAN
    assert_same_outputs(outdir, tiny_reference)

    # Every rule ran as a SLURM job; all batches in one `segment` group job that
    # asks for one batch's CPUs and memory.
    logs = tmp_path / ".snakemake" / "slurm_logs"
    for rule in ("ingest", "plan", "stitch", "measure"):
        assert list((logs / f"rule_{rule}").rglob("*.log")), f"no SLURM job for {rule}"
    groups = _group_jobs(text)
    assert len(groups) == 1, text
    job = subprocess.run(
        ["scontrol", "show", "job", groups[0]],
        env=slurm_cluster,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "NumCPUs=1 " in job, job
    assert re.search(r"mem=1000M", job), job
    group_log = next(logs.glob("group_segment*/*.log")).read_text()
    n_batches = 16 // TILES_PER_BATCH
    assert group_log.count("localrule segment_tiles:") == n_batches, group_log

    # The summary at the end names the scan as done.
    assert re.search(rf"ok\s+{SCAN}: \d+ cells", text), text
