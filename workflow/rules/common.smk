# Input, parameter and resource functions shared by the rule files, and the
# wildcard constraints. No rules here. The config has been validated by the
# Snakefile (defaults filled in) before this file is read.

import json
import os
import re
import shlex


RESULTS = os.path.normpath(config["results"])
SCANS = config["scans"]


def _alternatives(names):
    """Regex matching exactly one of `names` (nothing when there are none)."""
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


# Scans that the workflow generates itself (a `synth` entry in the config).
SYNTH_SCANS = sorted(name for name, scan in SCANS.items() if "synth" in scan)


wildcard_constraints:
    scan=_alternatives(SCANS),
    batch=r"[A-Za-z0-9_.-]+",


def _scan_setting(scan, key):
    """A per-scan setting, falling back to the top-level one."""
    value = SCANS[scan].get(key)
    return config[key] if value is None else value


def _option(flag, value):
    """`flag value` for the command line, or nothing when value is None."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join([flag, *(shlex.quote(str(v)) for v in value)])
    return f"{flag} {shlex.quote(str(value))}"


def _options(*pairs):
    return " ".join(option for option in (_option(f, v) for f, v in pairs) if option)


def all_targets():
    """Final outputs of every scan."""
    return [
        path
        for scan in sorted(SCANS)
        for path in (f"{RESULTS}/{scan}/cells.parquet", f"{RESULTS}/{scan}/work/stitch.json")
    ]


def scan_outdir(wildcards):
    """OUTDIR of one scan: {results}/{scan}."""
    return f"{RESULTS}/{wildcards.scan}"


def scan_image_path(scan):
    """The scan file (or folder) of a scan, as in the config."""
    return os.path.normpath(SCANS[scan]["path"])


def scan_image(wildcards):
    """The scan file (or folder) that ingest reads."""
    return scan_image_path(wildcards.scan)


def synth_labels_path(scan):
    """Ground-truth labels of a synthetic scan, beside its image."""
    return os.path.join(os.path.dirname(scan_image_path(scan)), f"{scan}_labels.tif")


def synth_options(scan):
    """`cellseg synth` options of a synthetic scan."""
    synth = SCANS[scan]["synth"]
    return _options(
        ("--shape", synth["shape"]),
        ("--pixel-size", synth.get("spacing")),
        ("--seed", synth.get("seed", 0)),
    )


def ingest_options(wildcards):
    scan = SCANS[wildcards.scan]
    return _options(
        ("--name", wildcards.scan),
        ("--pixel-size", scan.get("pixel_size")),
        ("--channel", scan.get("channel")),
    )


def plan_options(wildcards):
    return _options(
        ("--tile-size", _scan_setting(wildcards.scan, "tile_size")),
        ("--overlap", _scan_setting(wildcards.scan, "overlap")),
        ("--tiles-per-batch", config["tiles_per_batch"]),
        # The automatic halo depends on the backend and model.
        ("--backend", config["backend"]),
        ("--model", config["model"]),
    )


def segment_options(wildcards):
    return _options(
        ("--backend", config["backend"]),
        ("--model", config["model"]),
        ("--device", config["device"]),
        ("--batch-size", config["batch_size"]),
    )


def segment_gpus(wildcards):
    """One GPU per segment_tiles job when the config asks for CUDA."""
    return 1 if config["device"] == "cuda" else 0


def batch_candidates(wildcards):
    """Every batch's candidates file, read from the plan checkpoint's tiles.json."""
    tiles = checkpoints.plan.get(scan=wildcards.scan).output.tiles
    with open(tiles) as fh:
        batches = json.load(fh)["batches"]
    return [f"{RESULTS}/{wildcards.scan}/work/tiles/{batch}.npz" for batch in batches]
