# cellseg workflow: segment every cell of every scan listed in the config.
#
#   snakemake --cores all                          # configs/config.yaml
#   snakemake --profile configs/profiles/local
#   snakemake --cores all --configfile my.yaml --replace-workflow-config
#   snakemake --profile configs/profiles/slurm --configfile my.yaml    # a SLURM cluster
#
# Stages (one rule file each, workflow/rules/): synth (demo scans only),
# ingest, plan (checkpoint), segment_tiles (one job per batch of tiles),
# stitch, measure, report (per scan), export and report_run (per run). Every
# rule calls the `cellseg` command line.

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "configs/config.yaml"


# Validate the config and fill in defaults. A bad key is reported in one line
# (where, what) instead of jsonschema's dump of the whole schema.
try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as error:
    invalid = error.__context__
    if not isinstance(invalid, jsonschema.ValidationError):
        raise
    where = ".".join(str(part) for part in invalid.absolute_path) or "top level"
    raise WorkflowError(
        f"Invalid config ({where}): {invalid.message}. "
        "The keys, their types and defaults are described in "
        "cellseg/data/config.schema.yaml and configs/config.yaml."
    ) from None


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/stitch.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True


onsuccess:
    print(f"\ncellseg: outputs of {len(SCANS)} scan(s) in {RESULTS}/<scan>/:")
    for scan in sorted(SCANS):
        print(f"  {RESULTS}/{scan}/{scan}.ome.zarr  image + labels/cells (napari)")
        print(f"  {RESULTS}/{scan}/cells.parquet  one row per cell")
        print(f"  {RESULTS}/{scan}/report.html  QC report")
    print(f"  {RESULTS}/cells.parquet  all scans' cells, with a scan column")
    print(f"  {RESULTS}/report.html  the run's QC report")
    summarize_run()


# Which scans succeeded, and the failed stage and its error line for the others
# (with --keep-going a bad scan stops only its own jobs); also in summary.tsv.
onerror:
    summarize_run()
