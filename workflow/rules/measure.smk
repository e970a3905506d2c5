# Measure every cell of the stitched label image into cells.parquet.


rule measure:
    input:
        summary=f"{RESULTS}/{{scan}}/work/stitch.json",
    output:
        table=f"{RESULTS}/{{scan}}/cells.parquet",
    log:
        f"{RESULTS}/{{scan}}/logs/measure.log",
    benchmark:
        f"{RESULTS}/{{scan}}/benchmarks/measure.tsv"
    params:
        outdir=scan_outdir,
        dask=dask_options,
    threads: config["threads"]
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(120),
    conda:
        "../../environment.yml"
    shell:
        "cellseg measure {params.outdir:q} {params.dask} > {log:q} 2>&1"
