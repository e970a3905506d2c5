"""The streaming segment stage: same candidates as tiles segmented one after the other."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cellseg.io import open_image
from cellseg.layout import image_path, read_json, work_dir
from cellseg.normalize import normalize
from cellseg.segment import Candidates, tile_candidates
from cellseg.segmentation import get_backend
from cellseg.segmentation.base import BackendBase
from cellseg.stages import ingest, plan, segment_tiles
from cellseg.stages.plan import load_plan
from cellseg.stages.segment_tiles import stream_groups
from cellseg.stain import nuclear_image
from cellseg.synth import synthesize_scan
from cellseg.tiling import box_slices


def _sequential(outdir, batch):
    """The oracle: each tile read, labelled by ``predict`` and cut into candidates in turn."""
    info = read_json(work_dir(outdir) / "ingest.json", "ingest")
    content, tiles = load_plan(outdir)
    be = get_backend(
        content["backend"]["name"],
        content["backend"]["model"],
        device="cpu",
        **content["backend"]["options"],
    )
    image = np.asarray(nuclear_image(open_image(image_path(outdir, info)).data, info))
    parts = []
    for i in content["batch_tiles"][batch]:
        t = tiles[i]
        crop = normalize(image[box_slices(t.halo)], info["stats"])
        (lab,) = be.predict([crop], content["spacing"], info["stats"])
        parts.append(
            tile_candidates(
                lab,
                t,
                shape=content["shape"],
                core_shape=content["core_shape"],
                halo=content["halo"],
                margin=content["margin"],
            )
        )
    return Candidates.concat(parts, len(content["shape"]))


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    image, _ = synthesize_scan((128, 192), spacing=(0.5, 0.5), seed=5)
    np.save(root / "scan.npy", image)
    out = {}
    for name in ("model", "classical"):
        outdir = root / name
        ingest(root / "scan.npy", outdir, pixel_size=(0.5, 0.5))
        plan(outdir, tile_size=64, backend=name, tiles_per_batch=4, skip_background=False)
        out[name] = outdir
    return out


@pytest.mark.parametrize(
    "backend, batch_size, threads", [("model", 3, 2), ("classical", 1, 1), ("classical", 8, 3)]
)
def test_streamed_batches_equal_tiles_one_after_the_other(planned, backend, batch_size, threads):
    outdir = planned[backend]
    content, _ = load_plan(outdir)
    assert len(content["batches"]) >= 2
    for batch in content["batches"]:
        path = segment_tiles(
            outdir,
            batch,
            device="cpu",
            batch_size=batch_size,
            threads=threads,
            force=True,
            show_progress=False,
        )
        got = Candidates.load(path)
        want = _sequential(outdir, batch)
        assert len(got) == len(want) > 0
        for field in Candidates.FIELDS:
            a, b = getattr(got, field), getattr(want, field)
            assert a.dtype == b.dtype and np.array_equal(a, b), field


class _Jittery(BackendBase):
    """A backend whose steps take random times, so that tasks finish out of order."""

    per_tile_cpu = False
    splits_finish = True

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.forward_threads = set()
        self.finish_threads = set()

    def max_diameter_um(self):
        return 1.0

    def margin_px(self, spacing):
        return (0,) * len(spacing)

    def forward(self, crops, spacing):
        self.forward_threads.add(threading.get_ident())
        return [c * 2 for c in crops]

    def finish(self, forwarded, crops, spacing, stats):
        self.finish_threads.add(threading.get_ident())
        time.sleep(float(self.rng.uniform(0, 0.01)))
        return [f.astype(np.int32) for f in forwarded]

    def predict(self, crops, spacing, stats):
        return self.finish(self.forward(crops, spacing), crops, spacing, stats)


@pytest.mark.parametrize("splits", [True, False])
def test_stream_groups_keeps_the_order(splits):
    be = _Jittery()
    be.splits_finish = splits
    groups = [list(range(k, k + 3)) for k in range(0, 30, 3)]

    def read(group):
        return [np.full((2, 2), t) for t in group]

    def candidates(labels, group):
        return [(t, int(lab[0, 0])) for lab, t in zip(labels, group)]

    got = [
        c for res in stream_groups(be, groups, read, candidates, (1, 1), {}, workers=3) for c in res
    ]
    assert got == [(t, 2 * t) for t in range(30)]
    # the forward passes ran on this thread, the post-processing on the workers
    assert be.forward_threads == {threading.get_ident()}
    assert threading.get_ident() not in be.finish_threads


def test_stream_groups_raises_a_worker_error():
    be = _Jittery()

    def read(group):
        return [np.zeros((2, 2)) for _ in group]

    def candidates(labels, group):
        if group[0] == 4:
            raise ValueError("tile 4")
        return list(group)

    with pytest.raises(ValueError, match="tile 4"):
        list(stream_groups(be, [[k] for k in range(8)], read, candidates, (1, 1), {}, workers=2))
