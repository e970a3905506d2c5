"""Reading scans, writing OME-Zarr images and label images.

Every scan is presented the same way, whatever the file format: a lazy dask
array with the channel axis first, ``(C, Y, X)`` or ``(C, Z, Y, X)``, plus the
physical pixel size (spacing) of each spatial axis in micrometres.

Modules
-------
:mod:`cellseg.io.scan`
    :class:`Scan`, :func:`read_scan` (any supported scan), :func:`open_image`
    (an image written by cellseg), :func:`channel_index`.
:mod:`cellseg.io.readers`
    One reader per input format and the registry of formats by file-name
    ending (:data:`~cellseg.io.readers.READERS`): add an input format there.
:mod:`cellseg.io.metadata`
    Axes, physical pixel sizes and units from OME-XML, ImageJ, TIFF tags and
    NGFF metadata.
:mod:`cellseg.io.omezarr`
    Writing the OME-Zarr image pyramid (NGFF 0.5, Zarr v3) and label images.

Supported inputs
----------------
* TIFF, OME-TIFF and ImageJ TIFF (``.tif``, ``.tiff``), read lazily chunk by chunk.
* Zarr (a directory): a plain array, a group holding a single array, or an
  OME-Zarr image (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3; level 0 is read).
* NumPy ``.npy`` files, memory-mapped.

Outputs
-------
Images are written as OME-Zarr (NGFF 0.5, Zarr v3) with a multiscale pyramid,
label images as NGFF labels under the image group. Every output is written
under a temporary name and moved into place when whole.
"""

from __future__ import annotations

from cellseg.io.omezarr import (
    create_labels,
    finalize_labels,
    open_labels,
    read_image_attrs,
    write_image,
)
from cellseg.io.scan import Scan, channel_index, open_image, read_scan

__all__ = [
    "Scan",
    "channel_index",
    "create_labels",
    "finalize_labels",
    "open_image",
    "open_labels",
    "read_image_attrs",
    "read_scan",
    "write_image",
]
