# Resolve the candidates of all batches into one label image with global ids
# ({scan}.ome.zarr/labels/cells); work/stitch.json is written last.


rule stitch:
    input:
        tiles=f"{RESULTS}/{{scan}}/work/tiles.json",
        candidates=batch_candidates,
    output:
        summary=f"{RESULTS}/{{scan}}/work/stitch.json",
    log:
        f"{RESULTS}/{{scan}}/logs/stitch.log",
    params:
        outdir=scan_outdir,
        dask=dask_options,
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(120),
    conda:
        "../../environment.yml"
    shell:
        "cellseg stitch {params.outdir:q} {params.dask} > {log:q} 2>&1"
