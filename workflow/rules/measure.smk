# Measure every cell of the stitched label image into cells.parquet.


rule measure:
    input:
        summary=f"{RESULTS}/{{scan}}/work/stitch.json",
    output:
        table=f"{RESULTS}/{{scan}}/cells.parquet",
    log:
        f"{RESULTS}/{{scan}}/logs/measure.log",
    params:
        outdir=scan_outdir,
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        "../../environment.yml"
    shell:
        "cellseg measure {params.outdir:q} > {log:q} 2>&1"
