# Plan the tile grid of a scan. A checkpoint: the number of segment_tiles jobs
# is only known once work/tiles.json (with its "batches" list) exists.


checkpoint plan:
    input:
        summary=f"{RESULTS}/{{scan}}/work/ingest.json",
    output:
        tiles=f"{RESULTS}/{{scan}}/work/tiles.json",
    log:
        f"{RESULTS}/{{scan}}/logs/plan.log",
    params:
        outdir=scan_outdir,
        options=plan_options,
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(10),
    conda:
        "../../environment.yml"
    shell:
        "cellseg plan {params.outdir:q} {params.options} > {log:q} 2>&1"
