# Generate each synthetic scan (a scan with a `synth` entry in the config) at
# its configured path when the file is missing, with its ground-truth labels
# beside it (<scan>_labels.tif, for `cellseg evaluate`). The path is
# free-form, so there is one rule per synthetic scan, synth_<scan>, each
# calling `cellseg synth`; real scans get none.

for synth_scan in SYNTH_SCANS:

    rule:
        name:
            f"synth_{synth_scan}"
        output:
            image=scan_image_path(synth_scan),
            labels=synth_labels_path(synth_scan),
        log:
            f"{RESULTS}/{synth_scan}/logs/synth.log",
        benchmark:
            f"{RESULTS}/{synth_scan}/benchmarks/synth.tsv"
        params:
            options=synth_options(synth_scan),
        threads: 1
        resources:
            mem_mb=mem_mb(4000),
            runtime=runtime(30),
        conda:
            "../../environment.yml"
        shell:
            "cellseg synth {output.image:q} --labels {output.labels:q} {params.options}"
            " > {log:q} 2>&1"
