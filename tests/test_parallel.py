"""Chunk-parallel work: local threads, and a dask.distributed scheduler (--scheduler)."""

from __future__ import annotations

import builtins
import shutil
import subprocess
import sys
import threading

import dask
import dask.threaded
import pandas as pd
import pytest

from cellseg import cli
from cellseg.errors import ConfigError
from cellseg.parallel import dask_scheduler, local_threads, map_chunks


def test_map_chunks_keeps_the_order_and_uses_threads():
    seen = set()

    def square(x):
        seen.add(threading.get_ident())
        return x * x

    assert list(map_chunks(square, range(20), threads=3)) == [x * x for x in range(20)]
    assert list(map_chunks(square, [], threads=3)) == []
    seen.clear()
    assert list(map_chunks(square, range(5), threads=1)) == [0, 1, 4, 9, 16]
    assert seen == {threading.get_ident()}


def test_dask_scheduler_sets_the_local_threads():
    with dask_scheduler(threads=3):
        assert dask.config.get("scheduler") is dask.threaded.get
        assert dask.config.get("num_workers") == 3
        with local_threads():  # no distributed client: nothing changes
            assert dask.config.get("num_workers") == 3


_LOCAL_PROBE = """
import sys
import dask.array as da
import numpy as np
from cellseg import cli
from cellseg.measure.chunks import read_block as _read
from cellseg.parallel import dask_scheduler

out = sys.argv[1]
image = np.zeros((96, 96), np.uint16)
image[20:40, 30:50] = 1000
np.save(out + ".npy", image)
for command in (
    ["ingest", out + ".npy", "-o", out, "--pixel-size", "0.5", "0.5"],
    ["plan", out, "--backend", "classical", "--tile-size", "64"],
    ["segment-tiles", out, "--batch", "b0000"],
    ["stitch", out],
):
    assert cli.main(["-q", *command]) == 0
with dask_scheduler(threads=2):
    assert int(da.ones((64, 64), chunks=16).rechunk(32).sum().compute()) == 4096
part = _read(da.arange(10, chunks=3), (slice(2, 5),)).tolist()
print(part, "distributed" in sys.modules)
"""


def test_local_work_does_not_load_distributed(tmp_path):
    """With dask.distributed installed, stages on local threads run without importing it."""
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    out = subprocess.run(
        [sys.executable, "-c", _LOCAL_PROBE, str(tmp_path / "scan")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[-4:] == ["[2,", "3,", "4]", "False"], out.stdout


def test_a_scheduler_address_without_distributed_is_a_clear_error(monkeypatch, result2d, capsys):
    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    with pytest.raises(ConfigError, match="needs dask.distributed"):
        with dask_scheduler(address="tcp://127.0.0.1:8786"):
            pass
    assert cli.main(["measure", str(result2d), "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    err = capsys.readouterr().err
    assert "cellseg measure: error: --scheduler tcp://127.0.0.1:8786 needs dask.distributed" in err


def test_stages_on_a_distributed_scheduler_give_the_same_outputs(tmp_path, result2d):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    out = tmp_path / "result"
    shutil.copytree(result2d, out)
    image = next(out.glob("*.ome.zarr"))
    labels = (image / "labels" / "cells" / "0").rglob("*")
    before = {p.relative_to(image): p.read_bytes() for p in labels if p.is_file()}
    table = pd.read_parquet(out / "cells.parquet")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert cli.main(["-q", "stitch", str(out), "--force", "--scheduler", address]) == 0
        assert cli.main(["-q", "measure", str(out), "--force", "--scheduler", address]) == 0
    labels = (image / "labels" / "cells" / "0").rglob("*")
    after = {p.relative_to(image): p.read_bytes() for p in labels if p.is_file()}
    assert after == before
    pd.testing.assert_frame_equal(pd.read_parquet(out / "cells.parquet"), table)


_HEAP_PROBE = """
import sys
import numpy as np
from cellseg.parallel import keep_heap_flat, trim_heap

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "flat":
    assert keep_heap_flat()
np.ones(8 << 20, np.uint8)  # a chunk-sized block freed: glibc raises its mmap threshold
blocks = [np.ones(2 << 20, np.uint8) for _ in range(64)]
before = rss_mb()
del blocks[::2]  # every other block: the heap cannot shrink from its top
if sys.argv[1] == "trim":
    trim_heap()
print(before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize("mode", ["flat", "trim"])
def test_freed_chunk_sized_blocks_go_back_to_the_system(mode):
    """64 MB freed in 2 MB blocks between live ones leave the process's resident memory."""
    out = subprocess.run(
        [sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, check=True
    )
    assert float(out.stdout) > 56, out.stdout


_ROOMY_PROBE = """
import numpy as np
from cellseg.parallel import keep_heap_flat, roomy_heap

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

def every_other_freed(mb):
    blocks = [np.ones(mb << 20, np.uint8) for _ in range(64)]
    before = rss_mb()
    del blocks[::2]
    return before - rss_mb(), blocks

assert keep_heap_flat()
with roomy_heap():
    inside, kept = every_other_freed(2)
    before_exit = rss_mb()
trimmed = before_exit - rss_mb()
# kept stays, so the heap's free room is 2 MB holes between its blocks: 3 MB blocks
# come from the heap's top or from mappings of their own, which the threshold decides
after, _ = every_other_freed(3)
print(inside, trimmed, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_roomy_heap_reuses_blocks_then_gives_them_back():
    """Inside the block freed 2 MB blocks stay for reuse; leaving gives them back, and
    afterwards blocks of a few MB are mappings of their own again (the fixed threshold is
    back)."""
    out = subprocess.run(
        [sys.executable, "-c", _ROOMY_PROBE], capture_output=True, text=True, check=True
    )
    inside, trimmed, after = map(float, out.stdout.split())
    assert inside < 16, out.stdout
    assert trimmed > 48, out.stdout
    assert after > 84, out.stdout
