# Resolve the candidates of all batches into one label image with global ids,
# {scan}.ome.zarr/labels/cells: written whole under a temporary name, moved
# into place, then listed in the labels group's metadata (labels/zarr.json),
# which is the declared output (a directory() output would get Snakemake's
# timestamp file inside the label image, and any path inside labels/cells
# would have Snakemake create an empty labels/cells before the job runs).
# work/stitch.json is written last and marks the stage done.


rule stitch:
    input:
        tiles=f"{RESULTS}/{{scan}}/work/tiles.json",
        candidates=batch_candidates,
    output:
        summary=f"{RESULTS}/{{scan}}/work/stitch.json",
        labels=f"{RESULTS}/{{scan}}/{{scan}}.ome.zarr/labels/zarr.json",
    log:
        f"{RESULTS}/{{scan}}/logs/stitch.log",
    benchmark:
        f"{RESULTS}/{{scan}}/benchmarks/stitch.tsv"
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
        "cellseg stitch {params.outdir:q} {params.dask} > {log:q} 2>&1"
