# Read a scan into {results}/{scan}/{scan}.ome.zarr (image pyramid with its
# physical pixel sizes). The image folder is written whole under a temporary
# name and moved into place; work/ingest.json is written last and marks the
# stage done. The image is declared by its group metadata (zarr.json), not as
# a directory(): stitch later writes labels/cells into the same folder.


rule ingest:
    input:
        image=scan_image,
    output:
        summary=f"{RESULTS}/{{scan}}/work/ingest.json",
        image=f"{RESULTS}/{{scan}}/{{scan}}.ome.zarr/zarr.json",
    log:
        f"{RESULTS}/{{scan}}/logs/ingest.log",
    benchmark:
        f"{RESULTS}/{{scan}}/benchmarks/ingest.tsv"
    params:
        outdir=scan_outdir,
        options=ingest_options,
        dask=dask_options,
    threads: config["threads"]
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
    conda:
        "../../environment.yml"
    shell:
        "cellseg ingest {input.image:q} -o {params.outdir:q} {params.options} {params.dask}"
        " > {log:q} 2>&1"
