# Read a scan into {results}/{scan}/{scan}.ome.zarr (image pyramid with its
# physical pixel sizes). work/ingest.json is written last and marks the stage
# done; the .ome.zarr folder is not an output because stitch later writes the
# labels into it.


rule ingest:
    input:
        image=scan_image,
    output:
        summary=f"{RESULTS}/{{scan}}/work/ingest.json",
    log:
        f"{RESULTS}/{{scan}}/logs/ingest.log",
    params:
        outdir=scan_outdir,
        options=ingest_options,
        dask=dask_options,
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
    conda:
        "../../environment.yml"
    shell:
        "cellseg ingest {input.image:q} -o {params.outdir:q} {params.options} {params.dask}"
        " > {log:q} 2>&1"
