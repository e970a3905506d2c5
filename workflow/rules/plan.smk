# Plan the tile grid of a scan. A checkpoint: the number of segment_tiles jobs
# is only known once work/tiles.json (with its "batches" list) exists. With
# `diameter: auto` plan runs the model on sample crops (more memory and time).


checkpoint plan:
    input:
        summary=f"{RESULTS}/{{scan}}/work/ingest.json",
    output:
        tiles=f"{RESULTS}/{{scan}}/work/tiles.json",
    log:
        f"{RESULTS}/{{scan}}/logs/plan.log",
    benchmark:
        f"{RESULTS}/{{scan}}/benchmarks/plan.tsv"
    params:
        outdir=scan_outdir,
        options=plan_options,
    threads: 1
    resources:
        mem_mb=plan_mem_mb,
        runtime=plan_runtime,
    conda:
        "../../environment.yml"
    shell:
        "cellseg plan {params.outdir:q} {params.options} > {log:q} 2>&1"
