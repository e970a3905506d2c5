# QC reports and the run's combined table.
#
# report: per scan, results/{scan}/report.html from the scan's outputs.
# export: every scan's cells.parquet joined into results/cells.parquet, with a
#   `scan` column first.
# report_run: results/report.html, one row per scan, linking to their reports.


rule report:
    input:
        table=f"{RESULTS}/{{scan}}/cells.parquet",
        summary=f"{RESULTS}/{{scan}}/work/stitch.json",
        classes=scan_classes,
    output:
        report=f"{RESULTS}/{{scan}}/report.html",
    log:
        f"{RESULTS}/{{scan}}/logs/report.log",
    benchmark:
        f"{RESULTS}/{{scan}}/benchmarks/report.tsv"
    params:
        outdir=scan_outdir,
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(30),
    conda:
        "../../environment.yml"
    shell:
        "cellseg report {params.outdir:q} > {log:q} 2>&1"


rule export:
    input:
        tables=scan_tables(),
    output:
        table=f"{RESULTS}/cells.parquet",
    log:
        f"{RESULTS}/logs/export.log",
    benchmark:
        f"{RESULTS}/benchmarks/export.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=runtime(30),
    conda:
        "../../environment.yml"
    shell:
        "cellseg export {input.tables:q} -o {output.table:q} --format parquet > {log:q} 2>&1"


rule report_run:
    input:
        reports=scan_reports(),
        table=f"{RESULTS}/cells.parquet",
    output:
        report=f"{RESULTS}/report.html",
    log:
        f"{RESULTS}/logs/report_run.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_run.tsv"
    params:
        outdirs=scan_outdirs(),
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(30),
    conda:
        "../../environment.yml"
    shell:
        "cellseg report --run -o {output.report:q} --table {input.table:q} {params.outdirs}"
        " > {log:q} 2>&1"
