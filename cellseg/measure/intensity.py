"""Intensity columns: grey-value statistics of a cell and of its ring.

The *ring* of a cell is the background within ``ring_width_um`` of it (a
background / cytoplasm proxy); ``intensity_mean_corrected_<channel>`` is the
cell's mean minus the ring's median.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi


def intensity_stats(values: np.ndarray) -> tuple[float, ...]:
    """Mean, median, std, min, max and sum of some grey values (NaN when none; sum 0).

    Examples
    --------
    >>> intensity_stats(np.array([1.0, 2.0, 6.0]))
    (3.0, 2.0, 2.160246899469287, 1.0, 6.0, 9.0)
    """
    if values.size == 0:
        return (math.nan,) * 5 + (0.0,)
    v = values.astype(np.float64, copy=False)
    return (
        float(v.mean()),
        float(np.median(v)),
        float(v.std()),
        float(v.min()),
        float(v.max()),
        float(v.sum()),
    )


def ring_mask(
    mask: np.ndarray, labels: np.ndarray, spacing: Sequence[float], width_um: float
) -> np.ndarray:
    """Background pixels within ``width_um`` of a cell (its ring).

    Parameters
    ----------
    mask : ndarray of bool
        The cell, in a crop that reaches ``width_um`` beyond it where the scan allows.
    labels : ndarray of int, same shape
        The label image on the same crop: pixels of other cells are left out.
    spacing : sequence of float
        Pixel size in µm per axis.
    width_um : float
        Ring width in µm (centre to centre).

    Returns
    -------
    ndarray of bool
    """
    if width_um <= 0 or mask.all():
        return np.zeros(mask.shape, bool)
    dist = ndi.distance_transform_edt(~mask, sampling=tuple(float(s) for s in spacing))
    return (dist > 0) & (dist <= width_um * (1 + 1e-9)) & (labels == 0)
