"""Running the network: batched, padded crops; orthogonal views of stacks; devices."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from cellseg.parallel import roomy_heap
from cellseg.segmentation.network import alignment, plane_factor


def _pad_to(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pad = [(0, int(s) - n) for n, s in zip(arr.shape, shape)]
    if all(p == (0, 0) for p in pad):
        return arr
    return np.pad(arr, pad, mode="reflect" if all(n > 1 for n in arr.shape) else "edge")


#: Pixels per network forward pass (a batch of crops or planes is split to stay below).
MAX_BATCH_PX = {"cpu": 1 << 21, "cuda": 1 << 24}


def flip_sets(ndim: int) -> list[tuple[int, ...]]:
    """Every set of spatial axes to mirror for test-time flips (the empty set first).

    Examples
    --------
    >>> flip_sets(2)
    [(), (0,), (1,), (0, 1)]
    """
    axes = range(ndim)
    return [c for r in range(ndim + 1) for c in itertools.combinations(axes, r)]


def _forward(net, x, flips: bool):
    """Sigmoid of the network on batch ``x`` (N, C, *spatial); with ``flips`` the mean
    over every mirrored copy of the batch, each mirrored back."""
    import torch

    if not flips:
        return torch.sigmoid(net(x).float())
    total = None
    sets = flip_sets(x.ndim - 2)
    for axes in sets:
        dims = [a + 2 for a in axes]
        y = net(torch.flip(x, dims) if dims else x).float()
        y = torch.sigmoid(torch.flip(y, dims) if dims else y)
        total = y if total is None else total + y
    return total / len(sets)


def _run_network(
    net, crops: Sequence[np.ndarray], align: Sequence[int], device: str, flips: bool = False
) -> list:
    """(foreground, centre) maps of each crop, crops of equal padded shape batched.

    With ``flips`` the maps are averaged over the crops mirrored along every set
    of axes. Padded crops span multiples of the network's stride, so a pixel's
    place in the stride is the same in every tile's mirrored crop, and tiles
    still agree with one tile at the seams.
    """
    import torch

    padded = [
        _pad_to(
            np.asarray(c, np.float32), [int(math.ceil(n / a) * a) for n, a in zip(c.shape, align)]
        )
        for c in crops
    ]
    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(padded):
        groups.setdefault(p.shape, []).append(k)
    maps: list = [None] * len(crops)
    with torch.inference_mode():
        for shape, members in groups.items():
            step = max(1, MAX_BATCH_PX.get(device, 1 << 21) // max(math.prod(shape), 1))
            for i in range(0, len(members), step):
                part = members[i : i + step]
                x = torch.from_numpy(np.stack([padded[k] for k in part])[:, None]).to(device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"):
                    y = _forward(net, x, flips)
                y = y.cpu().numpy()
                for j, k in enumerate(part):
                    sl = tuple(slice(0, n) for n in crops[k].shape)
                    maps[k] = (y[j, 0][sl], y[j, 1][sl])
    return maps


def upsample_z(volume: np.ndarray, factor: int) -> np.ndarray:
    """Linear interpolation along axis 0: plane ``z * factor + j`` lies ``j / factor`` of
    the way from plane ``z`` to ``z + 1`` (the last plane is repeated past the end).

    Every output plane depends only on its two neighbours, so a crop of the
    result equals the result of the crop.
    """
    volume = np.asarray(volume, np.float32)
    if factor == 1:
        return volume
    nxt = np.concatenate([volume[1:], volume[-1:]], axis=0)
    w = (np.arange(factor, dtype=np.float32) / factor).reshape(1, factor, *[1] * (volume.ndim - 1))
    out = volume[:, None] * (1 - w) + nxt[:, None] * w
    return out.reshape(volume.shape[0] * factor, *volume.shape[1:])


def orthogonal_maps(
    net, volume: np.ndarray, spec: dict, spacing, device: str = "cpu", flips: bool = False
) -> tuple:
    """Average (foreground, centre) of a 2D network over the xy, xz and yz planes of a stack.

    The xz and yz planes see z resampled :func:`~cellseg.segmentation.network.plane_factor`
    times finer (:func:`upsample_z`); each group of planes is resampled, run and
    brought back to the stack's planes on its own, so the finer stack is never
    held whole.
    """
    k = plane_factor(spec, spacing)
    align = alignment(spec, spacing)[1:]
    volume = np.asarray(volume, np.float32)
    xy = _run_network(net, list(volume), align, device, flips)
    fg = np.stack([m[0] for m in xy])
    centre = np.stack([m[1] for m in xy])
    del xy
    limit = MAX_BATCH_PX.get(device, 1 << 21)
    for axis in (1, 2):
        n = volume.shape[axis]
        plane_px = volume.shape[0] * k * volume.shape[3 - axis]
        group = max(1, limit // max(plane_px, 1))
        for start in range(0, n, group):
            index = range(start, min(n, start + group))
            planes = [upsample_z(np.take(volume, i, axis=axis), k) for i in index]
            for i, (f, c) in zip(index, _run_network(net, planes, align, device, flips)):
                at = (slice(None), i) if axis == 1 else (slice(None), slice(None), i)
                fg[at] += f[::k]
                centre[at] += c[::k]
    return fg / 3, centre / 3


def predict_maps(
    net,
    crops: Sequence[np.ndarray],
    spec: dict,
    device: str = "cpu",
    spacing: Sequence[float] | None = None,
    flips: bool = False,
) -> list:
    """Run the network on a batch of normalised crops: (foreground, centre) maps per crop.

    Each crop is padded at its far end to the next multiple of the network's
    alignment (by reflection), so its result does not depend on the other
    crops of the batch; crops of equal padded shape run as one batch (split
    to at most :data:`MAX_BATCH_PX` pixels). Mixed precision (float16
    autocast) is used on CUDA. Orthogonal-view models run on the planes of
    each stack (:func:`orthogonal_maps`); ``spacing`` sets their z resampling.
    ``flips`` averages the maps over the crops (or planes) mirrored along every
    set of axes (test-time flips: 4 passes per 2D crop or plane, 8 for a 3D
    network), which smooths outlines at that many times the network's cost.
    The allocator reuses the tensors' memory meanwhile
    (:func:`cellseg.parallel.roomy_heap`).
    """
    with roomy_heap():
        if spec.get("views") == "orthogonal":
            return [orthogonal_maps(net, c, spec, spacing, device, flips) for c in crops]
        return _run_network(net, crops, alignment(spec), device, flips)
