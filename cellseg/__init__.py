"""cellseg: find every cell in large 2D and 3D microscopy scans."""

__version__ = "0.1.0"
