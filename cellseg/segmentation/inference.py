"""Running the network: batched, padded crops; orthogonal views of stacks; devices."""

from __future__ import annotations

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


def _run_network(net, crops: Sequence[np.ndarray], align: Sequence[int], device: str) -> list:
    """(foreground, centre) maps of each crop, crops of equal padded shape batched."""
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
                    y = net(x)
                y = torch.sigmoid(y.float()).cpu().numpy()
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


def orthogonal_maps(net, volume: np.ndarray, spec: dict, spacing, device: str = "cpu") -> tuple:
    """Average (foreground, centre) of a 2D network over the xy, xz and yz planes of a stack."""
    k = plane_factor(spec, spacing)
    align = alignment(spec, spacing)[1:]
    xy = _run_network(net, list(volume), align, device)
    fg = np.stack([m[0] for m in xy])
    centre = np.stack([m[1] for m in xy])
    up = upsample_z(volume, k)
    for axis in (1, 2):
        planes = list(np.moveaxis(up, axis, 0))
        res = _run_network(net, planes, align, device)
        fg += np.moveaxis(np.stack([m[0] for m in res]), 0, axis)[::k]
        centre += np.moveaxis(np.stack([m[1] for m in res]), 0, axis)[::k]
    return fg / 3, centre / 3


def predict_maps(
    net,
    crops: Sequence[np.ndarray],
    spec: dict,
    device: str = "cpu",
    spacing: Sequence[float] | None = None,
) -> list:
    """Run the network on a batch of normalised crops: (foreground, centre) maps per crop.

    Each crop is padded at its far end to the next multiple of the network's
    alignment (by reflection), so its result does not depend on the other
    crops of the batch; crops of equal padded shape run as one batch (split
    to at most :data:`MAX_BATCH_PX` pixels). Mixed precision (float16
    autocast) is used on CUDA. Orthogonal-view models run on the planes of
    each stack (:func:`orthogonal_maps`); ``spacing`` sets their z resampling.
    The allocator reuses the tensors' memory meanwhile
    (:func:`cellseg.parallel.roomy_heap`).
    """
    with roomy_heap():
        if spec.get("views") == "orthogonal":
            return [orthogonal_maps(net, c, spec, spacing, device) for c in crops]
        return _run_network(net, crops, alignment(spec), device)
