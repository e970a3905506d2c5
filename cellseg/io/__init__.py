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
:mod:`cellseg.io.slide`
    Whole-slide images: :func:`open_slide` (a pyramid level, lazily, with its
    pixel size, objective power and levels), :func:`slide_info`.
:mod:`cellseg.io.omezarr`
    Writing the OME-Zarr image pyramid (NGFF 0.5, Zarr v3) and label images.

Supported inputs
----------------
* TIFF, OME-TIFF and ImageJ TIFF (``.tif``, ``.tiff``), read lazily chunk by chunk.
* Zarr (a directory): a plain array, a group holding a single array, or an
  OME-Zarr image (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3; level 0 is read).
* NumPy ``.npy`` files, memory-mapped.
* Whole-slide images (:mod:`cellseg.io.slide`): Aperio SVS, Hamamatsu NDPI,
  generic tiled pyramidal TIFF and OME-TIFF (tiffslide), and through
  OpenSlide, when installed, Leica SCN, MIRAX, VMS, DICOM WSI; read tile by tile.

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
    image_levels,
    open_labels,
    read_image_attrs,
    write_image,
)
from cellseg.io.scan import Scan, channel_index, open_image, read_scan
from cellseg.io.slide import Slide, open_slide, slide_info

__all__ = [
    "Scan",
    "Slide",
    "channel_index",
    "create_labels",
    "finalize_labels",
    "image_levels",
    "open_image",
    "open_labels",
    "open_slide",
    "read_image_attrs",
    "read_scan",
    "slide_info",
    "write_image",
]
