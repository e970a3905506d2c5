# cellseg workflow: segment every cell of every scan listed in the config.
#
#   snakemake --cores all --configfile my.yaml
#   snakemake --profile configs/profiles/local --configfile my.yaml
#   snakemake --profile configs/profiles/slurm --configfile my.yaml    # a SLURM cluster
#   snakemake --cores all --configfile configs/demo.yaml               # the demo (make demo)
#
# configs/config.yaml, loaded first, is a commented template without scans;
# the --configfile given is merged over it. Stages (one rule file each,
# workflow/rules/): synth (demo scans only), ingest, plan (checkpoint),
# segment_tiles (one job per batch of tiles), stitch, measure, classify (scans
# with a `classify` setting), report (per scan), export and report_run (per run). Every rule calls the `cellseg`
# command line, and records its time and memory under {results}/.../benchmarks/.

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from cellseg.config import validate_config
from cellseg.errors import ConfigError

min_version("9.0")


configfile: "configs/config.yaml"


# Validate the config against the package's schema (cellseg/data/config.schema.yaml,
# the one source of every key's default) and fill in the defaults. A bad key is
# reported in one line: where, what, and where the keys are described.
try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


# With --software-deployment-method apptainer every rule runs in this image
# (config `container`, default cellseg.sif: `apptainer build cellseg.sif apptainer.def`).
container: config["container"]


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/stitch.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/classify.smk"
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
