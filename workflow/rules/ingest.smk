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
    threads: 2
    resources:
        mem_mb=8000,
    conda:
        "../../environment.yml"
    shell:
        "cellseg ingest {input.image:q} -o {params.outdir:q} {params.options} > {log:q} 2>&1"
