# Input, parameter and resource functions shared by the rule files, and the
# wildcard constraints. No rules here. The config has been validated by the
# Snakefile (defaults filled in) before this file is read.

import json
import os
import re
import shlex

from cellseg.classes import parse_rule, rule_text
from cellseg.errors import CellsegError
from cellseg.scans import expand_scans, format_summary, scan_outcomes, write_summary


RESULTS = os.path.normpath(config["results"])
if not config["scans"] and not config["inputs"]:
    raise WorkflowError(
        "No scans to segment: list them under `scans:` (name: path) or `inputs:` (glob "
        "patterns) of a config and pass it with --configfile my.yaml (configs/config.yaml "
        "is the commented template, configs/demo.yaml the demo)."
    )
# Scans listed by name (`scans`) and matched by glob patterns (`inputs`).
try:
    SCANS = expand_scans(config["scans"], config["inputs"])
except CellsegError as error:
    raise WorkflowError(f"Invalid config: {error}") from None


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
    """`flag value` for the command line, nothing when value is None or False, and the
    bare flag when it is True."""
    if value is None or value is False:
        return ""
    if value is True:
        return flag
    if isinstance(value, (list, tuple)):
        return " ".join([flag, *(shlex.quote(str(v)) for v in value)])
    return f"{flag} {shlex.quote(str(value))}"


def _options(*pairs):
    return " ".join(option for option in (_option(f, v) for f, v in pairs) if option)


def all_targets():
    """Final outputs of every scan, and the run's combined table and report."""
    return [
        path
        for scan in sorted(SCANS)
        for path in (
            f"{RESULTS}/{scan}/cells.parquet",
            f"{RESULTS}/{scan}/work/stitch.json",
            f"{RESULTS}/{scan}/report.html",
        )
    ] + [f"{RESULTS}/cells.parquet", f"{RESULTS}/report.html"]


def scan_tables(wildcards=None):
    """Every scan's cell table, in scan order."""
    return [f"{RESULTS}/{scan}/cells.parquet" for scan in sorted(SCANS)]


def scan_reports(wildcards=None):
    """Every scan's QC report, in scan order."""
    return [f"{RESULTS}/{scan}/report.html" for scan in sorted(SCANS)]


def scan_outdirs(wildcards=None):
    """Every scan's OUTDIR, quoted for the command line."""
    return " ".join(shlex.quote(f"{RESULTS}/{scan}") for scan in sorted(SCANS))


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
        ("--modality", synth.get("modality")),
        ("--stain", synth.get("stain") if synth.get("modality") == "brightfield" else None),
        ("--slide", synth.get("slide")),
    )


def ingest_options(wildcards):
    scan = SCANS[wildcards.scan]
    return _options(
        ("--name", wildcards.scan),
        ("--pixel-size", scan.get("pixel_size")),
        ("--channel", scan.get("channel")),
        ("--modality", _scan_setting(wildcards.scan, "modality")),
    )


def plan_options(wildcards):
    return _options(
        ("--tile-size", _scan_setting(wildcards.scan, "tile_size")),
        ("--overlap", _scan_setting(wildcards.scan, "overlap")),
        ("--tiles-per-batch", config["tiles_per_batch"]),
        # The automatic halo depends on the backend and model.
        ("--backend", config["backend"]),
        ("--model", config["model"]),
        ("--diameter", _scan_setting(wildcards.scan, "diameter")),
        ("--flips", config["flips"]),
        ("--level", config["level"]),
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


def segment_partition():
    """`slurm_partition` of segment_tiles on CUDA with a `gpu_partition`, else nothing
    (the profile's default-resources then apply)."""
    if config["device"] == "cuda" and config["gpu_partition"]:
        return {"slurm_partition": config["gpu_partition"]}
    return {}


def dask_options(wildcards, threads):
    """`--threads` and `--scheduler` of the stages with chunk-parallel array work."""
    return _options(("--threads", threads), ("--scheduler", config["scheduler"]))


def plan_runs_model(wildcards):
    """Whether plan may measure the nucleus size with the model: `diameter: auto`,
    or no diameter (then a scan whose file states no pixel size is measured)."""
    return _scan_setting(wildcards.scan, "diameter") in ("auto", None)


def plan_mem_mb(wildcards, attempt):
    """mem_mb of plan: 1 GB for the tile grid, 4 GB when it runs the model; doubled on
    each retry."""
    return (4000 if plan_runs_model(wildcards) else 1000) * 2 ** (attempt - 1)


def plan_runtime(wildcards, attempt):
    """runtime of plan in minutes: 10, or 30 when it runs the model; more on each retry."""
    return (30 if plan_runs_model(wildcards) else 10) * attempt


def mem_mb(base):
    """mem_mb resource: `base` MB, doubled on each retry (--retries) after a failure
    such as an out-of-memory kill."""
    return lambda wildcards, attempt: base * 2 ** (attempt - 1)


def runtime(base):
    """runtime resource in minutes: `base`, and `base` more on each retry (after a
    time-out)."""
    return lambda wildcards, attempt: base * attempt


def summarize_run():
    """Print which scans succeeded (and why the others did not) and write
    {results}/summary.tsv."""
    outcomes = scan_outcomes(RESULTS, SCANS)
    try:
        write_summary(f"{RESULTS}/summary.tsv", outcomes)
    except OSError as error:
        print(f"cellseg: cannot write {RESULTS}/summary.tsv: {error}")
    print(format_summary(outcomes))


def batch_candidates(wildcards):
    """Every batch's candidates file, read from the plan checkpoint's tiles.json."""
    tiles = checkpoints.plan.get(scan=wildcards.scan).output.tiles
    with open(tiles) as fh:
        batches = json.load(fh)["batches"]
    return [f"{RESULTS}/{wildcards.scan}/work/tiles/{batch}.npz" for batch in batches]


# Cell classes (classify.smk): a scan's `classify` setting as command-line options.
def scan_classify(scan):
    """The classify settings of a scan (its own, else the top level's), or None."""
    return _scan_setting(scan, "classify")


def classify_inputs(wildcards):
    """The rules file and classifier a scan's classes depend on."""
    settings = scan_classify(wildcards.scan) or {}
    return [p for p in (settings.get("rules_file"), settings.get("classifier")) if p]


def classify_options(wildcards):
    """`cellseg classify` options of a scan: its rules, rules file and classifier."""
    settings = scan_classify(wildcards.scan) or {}
    try:
        rules = [rule_text(parse_rule(r)) for r in settings.get("rules") or []]
    except CellsegError as error:
        raise WorkflowError(f"Invalid config (scan {wildcards.scan}, classify): {error}")
    return " ".join(
        [_option("--rule", r) for r in rules]
        + [
            _options(
                ("--rules", settings.get("rules_file")),
                ("--classifier", settings.get("classifier")),
            )
        ]
    ).strip()


def scan_classes(wildcards):
    """classes.parquet of a scan that is classified, for its report; else nothing."""
    if scan_classify(wildcards.scan):
        return [f"{RESULTS}/{wildcards.scan}/classes.parquet"]
    return []
