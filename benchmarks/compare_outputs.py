#!/usr/bin/env python3
"""Compare two results folders (e.g. of ``make demo`` before and after a change).

Every label image (``<scan>.ome.zarr/labels/<name>``) must be equal array for
array, every pyramid level (shape, dtype and every value), and every
``cells.parquet`` column for column (same columns in the same order, same
dtypes, equal values; floats exactly, or within ``--rtol``). Both folders
must hold the same label images and tables. Prints one summary line per scan
and exits 1 when anything differs (2 when a folder does not exist).

    python benchmarks/compare_outputs.py results-before results
    python benchmarks/compare_outputs.py OLD NEW --rtol 1e-6

OLD and NEW may be results folders (one sub-folder per scan) or the OUTDIR
of one scan (``cellseg segment -o OUTDIR``).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Elements of a label array compared at once (about 256 MB of uint32 per side).
SLAB_ELEMENTS = 64 * 1024 * 1024


def label_images(root: Path) -> list[str]:
    """Label groups under `root` (``*.ome.zarr/labels/<name>``), as relative paths."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*.ome.zarr/labels/*")
        if path.is_dir() and not path.name.startswith(".")
    )


def tables(root: Path) -> list[str]:
    """Every ``cells.parquet`` under `root`, as relative paths."""
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("cells.parquet"))


def scan_of(relative: str, root: Path) -> str:
    """The scan a relative path belongs to: its first folder, else the folder itself."""
    parts = relative.split("/")
    if len(parts) > 1 and not parts[0].endswith(".ome.zarr"):
        return parts[0]
    return root.resolve().name


def _slabs(shape: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Slices along the first axis, each of at most about ``SLAB_ELEMENTS`` elements."""
    if not shape:
        yield ()
        return
    per_row = int(np.prod(shape[1:], dtype=np.int64)) or 1
    step = max(1, SLAB_ELEMENTS // per_row)
    for start in range(0, shape[0], step):
        yield (slice(start, min(start + step, shape[0])),)


def compare_label_image(old: Path, new: Path) -> tuple[list[str], int]:
    """Differences between two label groups, and the number of levels compared."""
    import zarr

    a = zarr.open_group(str(old), mode="r")
    b = zarr.open_group(str(new), mode="r")
    levels_a = sorted(name for name, _ in a.arrays())
    levels_b = sorted(name for name, _ in b.arrays())
    problems = []
    if levels_a != levels_b:
        problems.append(f"pyramid levels {levels_a} != {levels_b}")
    for level in sorted(set(levels_a) & set(levels_b), key=lambda s: (len(s), s)):
        x, y = a[level], b[level]
        if x.shape != y.shape or x.dtype != y.dtype:
            problems.append(f"level {level}: {x.shape} {x.dtype} != {y.shape} {y.dtype}")
            continue
        n_differ = 0
        for region in _slabs(x.shape):
            n_differ += int(np.count_nonzero(np.asarray(x[region]) != np.asarray(y[region])))
        if n_differ:
            problems.append(f"level {level}: {n_differ} of {x.size} values differ")
    return problems, len(levels_a)


def compare_tables(old: Path, new: Path, rtol: float = 0.0) -> tuple[list[str], str]:
    """Differences between two Parquet tables, and a short description of the old one.

    Floating-point columns are equal when every value is (NaN equal to NaN),
    or, with ``rtol > 0``, within ``rtol`` of the old value.
    """
    import pandas as pd

    a = pd.read_parquet(old)
    b = pd.read_parquet(new)
    described = f"{len(a)} rows, {a.shape[1]} columns"
    problems = []
    if list(a.columns) != list(b.columns):
        gone = [c for c in a.columns if c not in b.columns]
        added = [c for c in b.columns if c not in a.columns]
        problems.append(f"columns differ (only in OLD: {gone}, only in NEW: {added}, or order)")
    if len(a) != len(b):
        problems.append(f"{len(a)} rows != {len(b)} rows")
        return problems, described
    if not a.index.equals(b.index):
        problems.append("the row index differs")
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    for column in [c for c in a.columns if c in b.columns]:
        x, y = a[column], b[column]
        if x.dtype != y.dtype:
            problems.append(f"column {column}: dtype {x.dtype} != {y.dtype}")
            continue
        if pd.api.types.is_float_dtype(x.dtype):
            u, v = x.to_numpy(), y.to_numpy()
            if rtol > 0:
                same = np.isclose(v, u, rtol=rtol, atol=0.0, equal_nan=True)
            else:
                same = (u == v) | (np.isnan(u) & np.isnan(v))
            n_differ = int(np.count_nonzero(~same))
        elif x.equals(y):
            n_differ = 0
        else:
            try:
                same = (x.eq(y) | (x.isna() & y.isna())).to_numpy(dtype=bool)
                n_differ = int(np.count_nonzero(~same)) or len(x)
            except (TypeError, ValueError):  # values that do not compare element-wise
                n_differ = len(x)
        if n_differ:
            problems.append(f"column {column}: {n_differ} of {len(x)} values differ")
    return problems, described


def compare(old: Path, new: Path, rtol: float = 0.0) -> dict[str, list[tuple[str, list[str]]]]:
    """Every label image and table of `old` and `new`, compared; per scan, each item's
    description and its differences (an empty list: equal)."""
    report: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    images_old, images_new = label_images(old), label_images(new)
    for path in sorted(set(images_old) | set(images_new)):
        scan = scan_of(path, old)
        name = "labels " + path.rsplit("/", 1)[-1]
        if path not in images_new or path not in images_old:
            where = "NEW" if path not in images_new else "OLD"
            report[scan].append((name, [f"{path} missing in {where}"]))
            continue
        problems, n_levels = compare_label_image(old / path, new / path)
        levels = f"{n_levels} level" + ("s" if n_levels != 1 else "")
        report[scan].append((f"{name} ({levels})", problems))
    tables_old, tables_new = tables(old), tables(new)
    for path in sorted(set(tables_old) | set(tables_new)):
        one_scan = any(old.glob("*.ome.zarr"))
        scan = scan_of(path, old) if "/" in path or one_scan else "(run)"
        if path not in tables_new or path not in tables_old:
            where = "NEW" if path not in tables_new else "OLD"
            report[scan].append(("cells.parquet", [f"{path} missing in {where}"]))
            continue
        problems, described = compare_tables(old / path, new / path, rtol)
        report[scan].append((f"cells.parquet ({described})", problems))
    return dict(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="results folder before")
    parser.add_argument("new", type=Path, help="results folder after")
    parser.add_argument(
        "--rtol",
        type=float,
        default=0.0,
        help="relative tolerance of floating-point table columns (default 0: exactly equal)",
    )
    args = parser.parse_args(argv)
    for folder in (args.old, args.new):
        if not folder.is_dir():
            print(f"compare_outputs: {folder} is not a folder", file=sys.stderr)
            return 2
    report = compare(args.old, args.new, args.rtol)
    if not report:
        print(f"compare_outputs: no label images or cells.parquet under {args.old} or {args.new}")
        return 1
    n_differ = 0
    for scan, items in sorted(report.items()):
        bad = [(name, problems) for name, problems in items if problems]
        n_differ += len(bad)
        print(f"{'DIFFER' if bad else 'equal':6}  {scan}: " + "; ".join(name for name, _ in items))
        for name, problems in bad:
            for problem in problems:
                print(f"          {name}: {problem}")
    n_items = sum(len(items) for items in report.values())
    print(f"compare_outputs: {n_items - n_differ} of {n_items} outputs equal ({len(report)} scans)")
    return 1 if n_differ else 0


if __name__ == "__main__":
    sys.exit(main())
