"""Make docs/napari-review.png: a synthetic scan reviewed in napari with the cellseg widget.

Run from the repository root (a virtual display is started when there is none)::

    .venv/bin/python docs/napari_screenshot.py [OUTPUT.png]

Segments a synthetic 2D scan (classical backend) into a temporary folder, opens
it with the cellseg reader, docks the review widget, filters and sorts the cell
list, jumps to the largest cell and flags it, then saves the window.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def make_screenshot(output: Path) -> Path:
    """Write the screenshot to `output` and return its path."""
    import imageio.v3 as iio
    import napari
    from qtpy.QtWidgets import QApplication

    from cellseg.napari._widget import camera
    from cellseg.stages import segment
    from cellseg.synth import write_synthetic_scan

    def settle() -> None:
        for _ in range(10):
            QApplication.processEvents()

    with tempfile.TemporaryDirectory() as tmp:
        scan, _ = write_synthetic_scan(Path(tmp) / "slide1.ome.tif", None, shape=(512, 512), seed=7)
        result = Path(tmp) / "slide1"
        segment(scan, result, tile_size=256, backend="classical", show_progress=False)
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1500, 900)
        viewer.open(result, plugin="cellseg")
        _, widget = viewer.window.add_plugin_dock_widget("cellseg", "Review cells")
        settle()
        widget.user_edit.setText("reviewer")
        widget.set_filter("area_um2 > 30 and 60 < centroid_y_um < 200 and 60 < centroid_x_um < 200")
        widget.sort_by("area_um2", ascending=False)
        widget.select_row(0)
        widget.flag_current("two nuclei?")
        camera(viewer).zoom /= 1.5
        settle()
        image = viewer.screenshot(canvas_only=False, flash=False)
        viewer.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(output, image)
    return output


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("napari-review.png")
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        with Display(size=(1600, 1000)):
            print(make_screenshot(output))
    else:
        print(make_screenshot(output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
