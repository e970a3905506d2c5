"""Many scans in one workflow run: the scan list, and what became of each scan.

The workflow config names scans one by one (``scans:``) and by glob pattern
(``inputs:``); :func:`expand_scans` turns both into one mapping from scan name
to settings. After a run, :func:`scan_outcomes` reads each scan's outputs and
logs and says which scans succeeded, and :func:`format_summary` prints it.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cellseg.atomic import atomic_write_bytes
from cellseg.config import SCAN_NAME_PATTERN
from cellseg.errors import ConfigError
from cellseg.layout import scan_name

#: The characters that may start a scan name, and those of the rest (the schema's pattern).
FIRST_CHARS, NAME_CHARS = re.fullmatch(r"\^\[(.+)\]\[(.+)\]\*\$", SCAN_NAME_PATTERN).groups()
#: A character that a scan name may not contain.
UNSAFE_CHAR = re.compile(f"[^{NAME_CHARS}]")
#: Longest scan name (it names files: ``<name>.ome.zarr`` must fit a file name's 255 bytes).
MAX_NAME_LENGTH = 200
# Per-pattern settings copied onto every scan that the pattern matches.
INPUT_SETTINGS = ("pixel_size", "channel", "modality", "tile_size", "overlap", "diameter")
# The workflow's stages in order, as named by their log files.
STAGES = ("synth", "ingest", "plan", "segment_tiles", "stitch", "measure", "report")


def scan_name_of(path: str | os.PathLike[str]) -> str:
    """Scan name of a file: its name without the image extensions, made safe.

    The image extensions are those of :data:`cellseg.layout.SCAN_SUFFIXES`;
    characters other than letters, digits, ``_``, ``.`` and ``-`` (those that
    the config schema allows in a scan's name) become ``_``.

    Examples
    --------
    >>> scan_name_of("/data/run 3/slide-7.ome.tif")
    'slide-7'
    >>> scan_name_of("/data/embryo (2).zarr")
    'embryo__2_'
    """
    name = UNSAFE_CHAR.sub("_", scan_name(Path(os.fspath(path).rstrip("/\\"))))
    if name and not re.match(f"[{FIRST_CHARS}]", name):
        name = "_" + name
    return name[:MAX_NAME_LENGTH] or "scan"


def default_scan_name(path: str | os.PathLike[str]) -> str:
    """The name of a scan given without ``--name``: its file name without the image extensions.

    Unlike :func:`scan_name_of` it keeps spaces and other printable characters
    (``run 3.tif`` is ``run 3``); control characters become ``_``, and a name
    that would be hidden or empty (``.x``, ``..``) gets a leading ``_``.

    Examples
    --------
    >>> default_scan_name("/data/run 3.ome.tif"), default_scan_name("/data/.a\x07b.tif")
    ('run 3', '_.a_b')
    """
    name = re.sub(r"[\x00-\x1f\x7f/\\]", "_", scan_name(Path(os.fspath(path).rstrip("/\\"))))
    if name.startswith(".") or not name:
        name = "_" + name
    return name[:MAX_NAME_LENGTH]


def check_scan_name(name: str, where: str = "--name") -> str:
    """`name` if it is a safe scan name (the schema's pattern), else a :class:`ConfigError`.

    A scan name names files inside OUTDIR, so it may not leave it or hide
    there: no ``/``, ``..`` as a name, leading dot, control characters.

    Examples
    --------
    >>> check_scan_name("slide-7")
    'slide-7'
    >>> check_scan_name("../etc")
    Traceback (most recent call last):
    ...
    cellseg.errors.ConfigError: --name '../etc' is not a scan name: ...
    """
    if (
        isinstance(name, str)
        and re.fullmatch(SCAN_NAME_PATTERN, name)
        and len(name) <= MAX_NAME_LENGTH
    ):
        return name
    raise ConfigError(
        f"{where} {name!r} is not a scan name: use letters, digits, '_', '.' and '-', "
        f"starting with a letter, digit or '_', at most {MAX_NAME_LENGTH} characters "
        f"(e.g. {scan_name_of(str(name)) if isinstance(name, str) else 'scan1'!r})."
    )


def expand_scans(
    scans: Mapping[str, Mapping] | None,
    inputs: Iterable[Mapping] | None = None,
    *,
    root: str | os.PathLike[str] = ".",
) -> dict[str, dict]:
    """All scans of a config: those named in ``scans`` and those matched by ``inputs``.

    Parameters
    ----------
    scans : mapping
        Scan name → settings (``path`` and optional per-scan settings).
    inputs : iterable of mapping, optional
        Each has a ``glob`` pattern (relative patterns are relative to `root`)
        and optional settings (``pixel_size``, ``channel``, ``modality``, ``tile_size``,
        ``overlap``, ``diameter``) for every file or folder it matches. A matched path is
        named by :func:`scan_name_of`.
    root : path
        Folder that relative patterns are relative to (the working directory).

    Returns
    -------
    dict
        Scan name → settings, sorted by name.

    Raises
    ------
    ConfigError
        If a pattern matches nothing, two scans get the same name, or there is
        no scan at all.

    Examples
    --------
    >>> expand_scans({"a": {"path": "a.tif"}})
    {'a': {'path': 'a.tif'}}
    """
    out = {name: dict(settings) for name, settings in (scans or {}).items()}
    origin = {name: f"scans.{name}" for name in out}
    for k, entry in enumerate(inputs or []):
        pattern = str(entry["glob"])
        where = f"inputs[{k}] (glob {pattern!r})"
        matches = _glob(pattern, root)
        if not matches:
            raise ConfigError(
                f"{where} matches no file or folder (relative to {os.path.abspath(root)}); "
                "fix the pattern or remove the entry."
            )
        settings = {key: entry[key] for key in INPUT_SETTINGS if entry.get(key) is not None}
        for path in matches:
            name = scan_name_of(path)
            if name in out:
                raise ConfigError(
                    f"two scans are named {name!r}: {out[name]['path']} ({origin[name]}) and "
                    f"{path} ({where}); rename a file or list one of them under `scans:` "
                    "with its own name."
                )
            out[name] = {"path": path, **settings}
            origin[name] = where
    if not out:
        raise ConfigError(
            "the config lists no scan: give `scans:` (name → path) or `inputs:` (glob patterns)."
        )
    return dict(sorted(out.items()))


def _glob(pattern: str, root: str | os.PathLike[str]) -> list[str]:
    """Paths matching `pattern`, relative to `root` when the pattern is, sorted."""
    pattern = os.path.expanduser(pattern)
    if os.path.isabs(pattern):
        return sorted(glob.glob(pattern, recursive=True))
    found = glob.glob(pattern, root_dir=os.fspath(root), recursive=True)
    return sorted(os.path.normpath(p) for p in found)


# ----------------------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class ScanOutcome:
    """What became of one scan in a workflow run.

    Attributes
    ----------
    scan : str
        Scan name.
    status : str
        ``"ok"`` (labels and table written), ``"failed"`` (a stage reported an
        error) or ``"incomplete"`` (not finished: interrupted, killed, or
        waiting on another scan).
    n_cells : int or None
        Cells found, for a scan that is ``"ok"``.
    stage : str
        The stage that failed (or the first one not done).
    message : str
        The error line of the failed stage.
    log : str
        The log file to read.
    """

    scan: str
    status: str
    n_cells: int | None = None
    stage: str = ""
    message: str = ""
    log: str = ""


def scan_outcome(scan: str, outdir: str | os.PathLike[str]) -> ScanOutcome:
    """Read one scan's outputs and logs and say whether it succeeded.

    A stage's log is rewritten each time the stage runs, so an error line in a
    log belongs to the latest attempt of that stage.
    """
    outdir = Path(outdir)
    for stage, log in _stage_logs(outdir):
        message = _error_line(log)
        if message:
            return ScanOutcome(scan, "failed", stage=stage, message=message, log=str(log))
    summary = outdir / "work" / "stitch.json"
    table = outdir / "cells.parquet"
    if summary.is_file() and table.is_file():
        try:
            n_cells = int(json.loads(summary.read_text())["n_cells"])
        except (OSError, ValueError, KeyError):
            n_cells = None
        return ScanOutcome(scan, "ok", n_cells=n_cells)
    stage = _first_missing_stage(outdir)
    return ScanOutcome(scan, "incomplete", stage=stage, log=str(outdir / "logs"))


def _stage_logs(outdir: Path) -> list[tuple[str, Path]]:
    """(stage, log file) of every log of a scan, in stage order.

    Batch logs (``logs/segment_tiles/<batch>.log``) count only for the batches
    of the current tile plan.
    """
    logs = outdir / "logs"
    batches = _planned_batches(outdir)
    found = []
    for stage in STAGES:
        if (logs / f"{stage}.log").is_file():
            found.append((stage, logs / f"{stage}.log"))
        if (logs / stage).is_dir():
            found.extend(
                (stage, p)
                for p in sorted((logs / stage).glob("*.log"))
                if batches is None or p.stem in batches
            )
    return found


def _planned_batches(outdir: Path) -> set[str] | None:
    try:
        return set(json.loads((outdir / "work" / "tiles.json").read_text())["batches"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _error_line(log: Path, max_bytes: int = 65536) -> str:
    """The error a cellseg command printed last in its log, or ``""``."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - max_bytes))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("cellseg ") and ": error:" in line:
            return line
    if any(line.startswith("Traceback") for line in lines):
        tail = [line.strip() for line in lines if line.strip()]
        return tail[-1] if tail else "Traceback"
    return ""


def _first_missing_stage(outdir: Path) -> str:
    work = outdir / "work"
    if not (work / "ingest.json").is_file():
        return "ingest"
    if not (work / "tiles.json").is_file():
        return "plan"
    if not (work / "stitch.json").is_file():
        return "segment_tiles/stitch"
    return "measure"


def scan_outcomes(results: str | os.PathLike[str], scans: Iterable[str]) -> list[ScanOutcome]:
    """:func:`scan_outcome` of every scan, its OUTDIR being ``results/<scan>``."""
    return [scan_outcome(scan, Path(results) / scan) for scan in sorted(scans)]


def format_summary(outcomes: list[ScanOutcome]) -> str:
    """A few lines saying which scans succeeded and why the others did not.

    Examples
    --------
    >>> print(format_summary([ScanOutcome("a", "ok", 12), ScanOutcome("b", "incomplete",
    ...     stage="ingest", log="results/b/logs")]))
    cellseg: 1 of 2 scans done, 0 failed, 1 incomplete
      ok          a: 12 cells
      incomplete  b: not finished (next stage: ingest; logs in results/b/logs)
    """
    n_ok = sum(o.status == "ok" for o in outcomes)
    n_failed = sum(o.status == "failed" for o in outcomes)
    lines = [
        f"cellseg: {n_ok} of {len(outcomes)} scans done, {n_failed} failed, "
        f"{len(outcomes) - n_ok - n_failed} incomplete"
    ]
    for o in outcomes:
        if o.status == "ok":
            cells = "?" if o.n_cells is None else o.n_cells
            lines.append(f"  ok          {o.scan}: {cells} cells")
        elif o.status == "failed":
            lines.append(f"  FAILED      {o.scan}: {o.stage}: {o.message} (log: {o.log})")
        else:
            lines.append(
                f"  incomplete  {o.scan}: not finished (next stage: {o.stage}; logs in {o.log})"
            )
    return "\n".join(lines)


def write_summary(path: str | os.PathLike[str], outcomes: list[ScanOutcome]) -> None:
    """Write the outcomes as a tab-separated table, atomically."""
    header = "scan\tstatus\tn_cells\tstage\tmessage\tlog"
    rows = [
        "\t".join(
            [
                o.scan,
                o.status,
                "" if o.n_cells is None else str(o.n_cells),
                o.stage,
                o.message.replace("\t", " "),
                o.log,
            ]
        )
        for o in outcomes
    ]
    atomic_write_bytes(Path(path), ("\n".join([header, *rows]) + "\n").encode("utf-8"))
