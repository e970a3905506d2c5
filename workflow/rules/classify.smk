# Cell classes of the scans whose config (or the top level) has a `classify`
# section: positive-cell rules and/or a saved classifier -> classes.parquet,
# which the scan's report then shows. Scans without one are not classified.


rule classify:
    input:
        table=f"{RESULTS}/{{scan}}/cells.parquet",
        settings=classify_inputs,
    output:
        classes=f"{RESULTS}/{{scan}}/classes.parquet",
    log:
        f"{RESULTS}/{{scan}}/logs/classify.log",
    benchmark:
        f"{RESULTS}/{{scan}}/benchmarks/classify.tsv"
    params:
        outdir=scan_outdir,
        options=classify_options,
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(30),
    conda:
        "../../environment.yml"
    shell:
        "cellseg classify {params.outdir:q} {params.options} > {log:q} 2>&1"
