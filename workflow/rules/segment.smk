# Segment one batch of tiles into candidate objects (work/tiles/{batch}.npz).
# One job per batch listed in work/tiles.json; with `device: cuda` each job
# asks for one GPU (in the `gpu_partition`). The slurm profile groups several
# batches of a scan into one cluster job.


rule segment_tiles:
    input:
        tiles=f"{RESULTS}/{{scan}}/work/tiles.json",
    output:
        candidates=f"{RESULTS}/{{scan}}/work/tiles/{{batch}}.npz",
    log:
        f"{RESULTS}/{{scan}}/logs/segment_tiles/{{batch}}.log",
    benchmark:
        f"{RESULTS}/{{scan}}/benchmarks/segment_tiles/{{batch}}.tsv"
    params:
        outdir=scan_outdir,
        options=segment_options,
    threads: config["threads"]
    resources:
        mem_mb=mem_mb(8000),
        runtime=runtime(60),
        gpu=segment_gpus,
        **segment_partition(),
        # The slurm profile allows one slot per cluster job: a group job runs
        # its batches one after the other, asking for one batch's resources.
        segment_slots=1,
    conda:
        "../../environment.yml"
    shell:
        "cellseg segment-tiles {params.outdir:q} --batch {wildcards.batch:q}"
        " {params.options} --threads {threads} > {log:q} 2>&1"
