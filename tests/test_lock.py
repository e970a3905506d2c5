"""Locks and cluster-safe temporaries: one writer per output, holders named, stale ones go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cellseg import atomic
from cellseg.atomic import atomic_write_bytes, host_name, remove_stale_siblings, temp_tag
from cellseg.cli import main
from cellseg.lock import FileLock, LockedError, hold, lock_path, lock_wait, locked, read_holder

OTHER_HOST = "node_elsewhere"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_lock(path: Path, host: str, pid: int, age_s: float = 0.0) -> None:
    """A lock file as another run would have left it, last refreshed `age_s` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": host, "pid": pid, "started": "2026-01-01T00:00:00+00:00", "token": "t0"}
    path.write_text(json.dumps(record))
    then = time.time() - age_s
    os.utime(path, (then, then))


def _holder_script(lock: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds `lock` for `seconds` and prints `held` once it does."""
    code = textwrap.dedent(
        f"""
        import time
        from cellseg.lock import FileLock
        with FileLock({str(lock)!r}, command="cellseg segment (test holder)"):
            print("held", flush=True)
            time.sleep({seconds})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_names_its_holder_and_a_second_is_refused(tmp_path):
    path = tmp_path / "a.lock"
    with FileLock(path, "the outputs", command="cellseg stitch") as first:
        holder = read_holder(path)
        assert (holder.host, holder.pid, holder.command) == (
            host_name(),
            os.getpid(),
            "cellseg stitch",
        )
        assert holder.started == first.holder.started
        with pytest.raises(LockedError) as err:
            FileLock(path, "the outputs").acquire(wait=0)
        message = str(err.value)
        assert f"process {os.getpid()} on host {host_name()}" in message
        assert "--wait-lock" in message and str(path) in message
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporaries of the lock left


def test_second_waits_for_the_first(tmp_path):
    path = tmp_path / "a.lock"
    first = FileLock(path)
    first.acquire()
    threading.Timer(0.5, first.release).start()
    second = FileLock(path)
    t0 = time.monotonic()
    second.acquire(wait=20)
    assert 0.3 < time.monotonic() - t0 < 15
    assert read_holder(path).token == second.holder.token
    second.release()


def test_heartbeat_refreshes_the_lock(tmp_path):
    path = tmp_path / "a.lock"
    with FileLock(path, heartbeat_s=0.05):
        before = os.stat(path).st_mtime_ns
        time.sleep(0.4)
        assert os.stat(path).st_mtime_ns > before


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    path = tmp_path / "a.lock"
    dead = _dead_pid()
    _fake_lock(path, host_name(), dead)
    with FileLock(path) as lock:
        assert read_holder(path).token == lock.holder.token


def test_live_holder_on_another_host_is_respected_then_taken_over_when_stale(tmp_path):
    path = tmp_path / "a.lock"
    out = tmp_path / "x.npz"
    foreign_tmp = tmp_path / f".x.npz.tmp-4242@{OTHER_HOST}-1"
    foreign_tmp.write_bytes(b"half")
    _fake_lock(path, OTHER_HOST, 4242, age_s=1.0)
    with pytest.raises(LockedError, match=f"process 4242 on host {OTHER_HOST}"):
        FileLock(path, stale_s=60).acquire(wait=0.2)
    atomic_write_bytes(out, b"whole")
    assert foreign_tmp.exists(), "a temporary of a live job on another node was removed"

    # its heartbeat stops: no refresh for stale_s (by the file's time, or while watched)
    _fake_lock(path, OTHER_HOST, 4242, age_s=61)
    with FileLock(path, stale_s=60):
        atomic_write_bytes(out, b"whole again")
    assert not foreign_tmp.exists(), "the gone owner's temporary was kept"
    atomic._GONE.discard((OTHER_HOST, 4242))


def test_unchanged_lock_is_stale_after_watching_it(tmp_path):
    """Staleness by this process's own clock: immune to another node's clock."""
    path = tmp_path / "a.lock"
    _fake_lock(path, OTHER_HOST, 4343, age_s=-3600)  # a clock an hour ahead
    t0 = time.monotonic()
    lock = FileLock(path, stale_s=1.0)
    lock.acquire(wait=30)
    assert time.monotonic() - t0 >= 1.0
    lock.release()
    atomic._GONE.discard((OTHER_HOST, 4343))


def test_temporaries_carry_host_and_pid_and_dead_ones_go(tmp_path):
    out = tmp_path / "a.json"
    legacy = tmp_path / f".a.json.tmp-{_dead_pid()}-77"
    dead_here = tmp_path / f"a.json.tmp-{_dead_pid()}@{host_name()}"
    own = tmp_path / f"a.json.tmp-{temp_tag()}"
    for p in (legacy, dead_here, own):
        p.write_text("x")
    remove_stale_siblings(out)
    assert not legacy.exists() and not dead_here.exists()
    assert own.exists()
    assert temp_tag() == f"{os.getpid()}@{host_name()}"


def test_hold_is_reentrant_and_locked_takes_the_outdir_lock(tmp_path):
    @locked("segment_tiles", per="batch")
    def stage(outdir, batch):
        return read_holder(lock_path(outdir, f"segment_tiles-{batch}")).pid

    assert stage(tmp_path, "b0001") == os.getpid()
    path = lock_path(tmp_path, "x")
    with hold(path), hold(path):
        assert path.exists()
    assert not path.exists()


def test_lock_wait_sets_the_default(tmp_path):
    path = tmp_path / "a.lock"
    proc = _holder_script(path, 0.6)
    try:
        with lock_wait(30):
            with hold(path):
                assert read_holder(path).pid == os.getpid()
    finally:
        proc.wait()


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "small.npy"
    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, (96, 96)).astype(np.float32)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in ((20, 20), (30, 70), (70, 40), (75, 80)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] += 400
    np.save(path, image)
    return path


def _segment(scan: Path, outdir: Path, *extra: str) -> list[str]:
    return ["segment", str(scan), "-o", str(outdir), "--backend", "classical", *extra]


def test_second_segment_into_one_outdir_is_refused_then_runs(tmp_path, small_scan, capsys):
    outdir = tmp_path / "out"
    proc = _holder_script(lock_path(outdir, "run"), 60)
    try:
        assert main(["-q", *_segment(small_scan, outdir)]) == 2
        err = capsys.readouterr().err
        assert f"process {proc.pid} on host {host_name()}" in err
        assert "Traceback" not in err
        assert not (outdir / "cells.parquet").exists()
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing: its lock is taken over at once (same host, dead)
    assert main(["-q", *_segment(small_scan, outdir)]) == 0
    assert (outdir / "cells.parquet").exists()
    assert sorted(p.name for p in (outdir / "work" / "locks").iterdir()) == []


def test_wait_lock_option_waits(tmp_path, small_scan):
    outdir = tmp_path / "out"
    proc = _holder_script(lock_path(outdir, "stitch"), 1.0)
    try:
        assert main(["-q", "--wait-lock", "60", *_segment(small_scan, outdir)]) == 0
    finally:
        proc.wait()
    assert (outdir / "work" / "stitch.json").exists()
