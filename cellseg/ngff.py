"""Copies of a scan's OME-Zarr in another NGFF version (``cellseg export --format ome-zarr``).

The pipeline writes NGFF 0.5 (Zarr v3, :mod:`cellseg.io.omezarr`). Viewers
that do not read 0.5 yet (QuPath, older napari-ome-zarr, Fiji's MoBIE, ...)
read NGFF 0.4 on Zarr v2: :func:`write_omezarr` copies the image pyramid and
every label image (``labels/cells``, and ``labels/cells_corrected`` where a
review saved corrections) with their pyramids into a new store of either
version, chunk by chunk (memory bounded by a few chunks), with the same dataset
paths (``0``, ``1``, ...), scales, axes, channel labels and cellseg attributes.
The metadata is written by the ``ome-zarr`` library, the reference
implementation, as for the pipeline's own store. The copy is written under a
temporary name and renamed when whole; the source is only read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from cellseg.atomic import remove_path, remove_stale_siblings, replace_path, temp_sibling
from cellseg.errors import InputError
from cellseg.io.metadata import ome_attrs

__all__ = ["NGFF_VERSIONS", "write_omezarr"]

#: NGFF versions a copy can be written in, with their Zarr format.
NGFF_VERSIONS = {"0.4": 2, "0.5": 3}
#: Attributes cellseg keeps in its groups (copied as they are).
_CELLSEG_KEY = "cellseg"


def _format(version: str) -> Any:
    # ome-zarr is tens of MB of modules: loaded only when a copy is written
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV04() if version == "0.4" else FormatV05()


def _metadata_writer() -> Any:
    # ome_zarr.writer builds a deprecated default argument at import time; the
    # warning concerns an API cellseg does not use
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_multiscales_metadata
    return write_multiscales_metadata


def _copy_multiscale(source: zarr.Group, target: zarr.Group, version: str) -> dict:
    """Copy the levels of one multiscale group and write its metadata; its ``ome`` attrs."""
    ome = ome_attrs(source)
    multiscale = ome["multiscales"][0]
    names = [a["name"] for a in multiscale["axes"]]
    for dataset in multiscale["datasets"]:
        src = source[dataset["path"]]
        kwargs: dict[str, Any] = {}
        if version == "0.4":
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = names
        dst = target.create_array(
            dataset["path"],
            shape=src.shape,
            chunks=src.chunks,
            dtype=src.dtype,
            fill_value=0,
            **kwargs,
        )
        da.store(da.from_zarr(src), dst, lock=False)
    extra = {"omero": _omero(ome["omero"], source, multiscale)} if "omero" in ome else {}
    _metadata_writer()(
        target,
        [dict(d) for d in multiscale["datasets"]],
        fmt=_format(version),
        axes=[dict(a) for a in multiscale["axes"]],
        name=multiscale.get("name"),
        metadata=extra,
    )
    if _CELLSEG_KEY in source.attrs:
        target.attrs.update({_CELLSEG_KEY: dict(source.attrs[_CELLSEG_KEY])})
    return ome


def _omero(omero: dict, source: zarr.Group, multiscale: dict) -> dict:
    """The ``omero`` metadata with each channel's display ``window`` (required by NGFF 0.4).

    ``min``/``max`` span the data type (the data's range for floats); ``start``/``end``
    the channel's range in the coarsest pyramid level (small: read whole).
    """
    coarsest = np.asarray(source[multiscale["datasets"][-1]["path"]])
    names = [a["name"] for a in multiscale["axes"]]
    channels = []
    for k, channel in enumerate(omero.get("channels", [])):
        plane = np.take(coarsest, k, axis=names.index("c")) if "c" in names else coarsest
        lo, hi = (float(plane.min()), float(plane.max())) if plane.size else (0.0, 1.0)
        if np.issubdtype(coarsest.dtype, np.integer):
            info = np.iinfo(coarsest.dtype)
            full = (float(info.min), float(info.max))
        else:
            full = (lo, hi)
        window = {"min": full[0], "max": full[1], "start": lo, "end": max(hi, lo + 1e-6)}
        channels.append(dict(channel, window=dict(window, **channel.get("window", {}))))
    return dict(omero, channels=channels)


def _set_ome(group: zarr.Group, version: str, values: dict) -> None:
    """Add NGFF keys to a group: top level in 0.4, under ``ome`` in 0.5."""
    if version == "0.4":
        group.attrs.update(values)
    else:
        ome = dict(group.attrs.get("ome", {}))
        ome.update(values)
        ome["version"] = version
        group.attrs.update({"ome": ome})


def write_omezarr(image: str | Path, output: str | Path, *, version: str = "0.4") -> Path:
    """Copy a scan's OME-Zarr image and its label images into NGFF `version`.

    Parameters
    ----------
    image : path
        The scan's OME-Zarr image (``OUTDIR/<scan>.ome.zarr``).
    output : path
        The copy to write (``.ome.zarr``); an existing one is replaced when the
        new one is whole.
    version : {"0.4", "0.5"}
        NGFF version: 0.4 on Zarr v2 (for viewers that do not read 0.5 yet), or
        0.5 on Zarr v3 (as the pipeline writes).

    Returns
    -------
    Path
        The written copy.

    Raises
    ------
    InputError
        If `image` is not an OME-Zarr image, or `version` is not one of
        :data:`NGFF_VERSIONS`.
    """
    image, output = Path(image), Path(output)
    if version not in NGFF_VERSIONS:
        raise InputError(
            f"NGFF version {version!r}; choose one of {', '.join(NGFF_VERSIONS)} "
            "(--ome-zarr-version)"
        )
    if output.resolve() == image.resolve():
        raise InputError(f"{output}: the copy would replace its source; choose another -o")
    try:
        source = zarr.open_group(str(image), mode="r")
        ome_attrs(source)["multiscales"]
    except Exception:
        raise InputError(
            f"{image}: not an OME-Zarr image; give a scan's output folder or its .ome.zarr"
        ) from None
    tmp = temp_sibling(output)
    remove_stale_siblings(output)
    remove_path(tmp)
    try:
        target = zarr.open_group(str(tmp), mode="w", zarr_format=NGFF_VERSIONS[version])
        _copy_multiscale(source, target, version)
        names = list(ome_attrs(source["labels"]).get("labels", [])) if "labels" in source else []
        if names:
            labels = target.create_group("labels")
            for name in names:
                src = source["labels"][name]
                dst = labels.create_group(name)
                ome = _copy_multiscale(src, dst, version)
                label = dict(ome.get("image-label", {}), version=version)
                label.setdefault("source", {"image": "../../"})
                _set_ome(dst, version, {"image-label": label})
            _set_ome(labels, version, {"labels": names})
        replace_path(tmp, output)
    except BaseException:
        remove_path(tmp)
        raise
    return output
