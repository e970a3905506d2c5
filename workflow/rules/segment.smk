# Segment one batch of tiles into candidate objects (work/tiles/{batch}.npz).
# One job per batch listed in work/tiles.json; with `device: cuda` each job
# asks for one GPU.


rule segment_tiles:
    input:
        tiles=f"{RESULTS}/{{scan}}/work/tiles.json",
    output:
        candidates=f"{RESULTS}/{{scan}}/work/tiles/{{batch}}.npz",
    log:
        f"{RESULTS}/{{scan}}/logs/segment_tiles/{{batch}}.log",
    params:
        outdir=scan_outdir,
        options=segment_options,
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        gpu=segment_gpus,
    conda:
        "../../environment.yml"
    shell:
        "cellseg segment-tiles {params.outdir:q} --batch {wildcards.batch:q}"
        " {params.options} --threads {threads} > {log:q} 2>&1"
