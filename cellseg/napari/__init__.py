"""napari plugin of cellseg: open results, review and correct cells.

The plugin is declared in ``napari.yaml`` (npe2) and registered through the
``napari.manifest`` entry point. Its modules are thin adapters:

* ``_reader.py``: a result folder or ``<scan>.ome.zarr`` as layers (image
  pyramid, ``labels/cells`` with the cell table as ``features``);
* ``_widget.py``: the review dock widget (cell list, flags, colouring,
  corrections), over the pure functions of ``_review.py`` and
  :mod:`cellseg.corrections`;
* ``_classes.py``: the widget's *Cell classes* box (keys 1–9 label cells,
  one button trains the classifier and classifies every cell);
* ``_sample_data.py``: small synthetic scans with their segmentation.

Importing this package imports neither napari nor Qt.
"""
