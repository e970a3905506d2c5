"""The ``cellseg`` command line.

Each command imports the modules it runs when it runs (they import numpy,
pandas, zarr, dask and more, seconds in all), so ``cellseg --help`` is instant.
Options default to the config schema's defaults (:data:`cellseg.config.DEFAULTS`).
User errors (:class:`cellseg.errors.CellsegError`) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cellseg import __version__
from cellseg.config import CONFIG_SCHEMA, DEFAULTS, load_schema
from cellseg.errors import CellsegError, disk_full_error
from cellseg.layout import scan_name
from cellseg.lock import lock_wait
from cellseg.parallel import allow_processes, dask_scheduler, keep_heap_flat

#: The devices that model backends run on, as the config schema names them.
DEVICES = list(load_schema(CONFIG_SCHEMA)["properties"]["device"]["enum"])


def _channel(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def _add_scan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pixel-size",
        type=float,
        nargs="+",
        metavar="UM",
        help="µm per spatial axis in the file's order, e.g. 2 0.5 0.5 for a ZYX stack "
        "(default: the file's metadata, else 1 µm)",
    )
    p.add_argument(
        "--channel",
        type=_channel,
        metavar="IDX|NAME",
        help="the nuclear channel of a multichannel scan, by index or name (default 0)",
    )
    p.add_argument(
        "--modality",
        choices=("auto", "fluorescence", "brightfield"),
        default=DEFAULTS["modality"],
        help="fluorescence, brightfield (H&E / IHC RGB slides) or auto: an 8-bit RGB scan "
        "with a bright background is brightfield (default %(default)s)",
    )


def _diameter(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of µm nor auto") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the diameter must be positive")
    return value


def _add_diameter(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--diameter",
        type=_diameter,
        metavar="UM|auto",
        help="typical nucleus diameter in µm, for the model backend; auto measures it "
        "with the model on sample crops; nuclei under 12 or over 30 px are rescaled to "
        "about 24 px (default: "
        "auto when the file states no pixel size, else no rescaling; the shipped "
        "models cover nuclei of about 12-48 px across)",
    )


def _add_flips(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flips",
        action="store_true",
        default=DEFAULTS["flips"],
        help="test-time flips (model backend): average the network over each tile mirrored "
        "along every set of axes; smoother outlines at about 4x the network's time",
    )


def _level(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is neither a level (0, 1, ...) nor auto")
    return int(text)


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tile-size",
        type=int,
        nargs="+",
        default=[DEFAULTS["tile_size"]],
        metavar="N",
        help="tile core edge in pixels (voxels in 3D), one value or one per axis "
        f"(default {DEFAULTS['tile_size']}; a size at least the scan's gives one tile)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        metavar="N",
        help="halo width in pixels of the finest axis (default: automatic, the largest "
        "expected cell plus the backend's context)",
    )
    p.add_argument(
        "--tiles-per-batch",
        type=int,
        default=DEFAULTS["tiles_per_batch"],
        metavar="N",
        help=f"tiles per batch file / workflow job (default {DEFAULTS['tiles_per_batch']})",
    )
    p.add_argument(
        "--level",
        type=_level,
        default=DEFAULTS["level"],
        metavar="auto|N",
        help="pyramid level segmented (labels stay full resolution); auto: for brightfield "
        "slides the level nearest the model's pixel size, else 0 (default %(default)s)",
    )


def _add_backend_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    p.add_argument(
        "--backend",
        help="segmentation backend, by its registered name: model (a trained network; "
        "the default) or classical" + ("" if defaults else "; default: the plan's"),
    )
    p.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="shipped model name, model folder or bioimage.io package (.zip, or its "
        "folder) of cellseg (backend model)",
    )
    p.add_argument(
        "--device",
        default=DEFAULTS["device"],
        choices=DEVICES,
        help=f"where model backends run (default {DEFAULTS['device']}: cuda when present)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS["batch_size"],
        metavar="N",
        help=f"tiles per backend call / forward pass (default {DEFAULTS['batch_size']})",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="worker threads for CPU backends (default: all cores)",
    )


def _add_dask_options(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--scheduler`` (and ``--threads``) of the stages that do array work with dask."""
    if threads:
        p.add_argument(
            "--threads",
            type=int,
            metavar="N",
            help="threads for chunk-parallel work (default: all cores)",
        )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask.distributed scheduler to run chunk-parallel work on, e.g. "
        "tcp://host:8786 (default: local threads; needs the `distributed` package)",
    )


def _dask_context(args: argparse.Namespace):
    """The dask scheduler of a command: ``--scheduler`` where it has one, else local threads."""
    return dask_scheduler(getattr(args, "threads", None), getattr(args, "scheduler", None))


def _tile_size(values: list[int]) -> int | tuple[int, ...]:
    return values[0] if len(values) == 1 else tuple(values)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cellseg``."""
    parser = argparse.ArgumentParser(
        prog="cellseg",
        description="Find every cell in large 2D and 3D microscopy scans.",
    )
    parser.add_argument("--version", action="version", version=f"cellseg {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--wait-lock",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for another run that writes the same outputs to finish "
        "(default 0: refuse at once, naming that run)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("segment", help="run every stage on one scan in this process")
    p.add_argument(
        "input",
        type=Path,
        help="TIFF / OME-TIFF / Zarr / OME-Zarr / .npy scan, or a whole slide (.svs, .ndpi, ...)",
    )
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder")
    p.add_argument("--name", help="scan name (default: the file name)")
    p.add_argument("--force", action="store_true", help="redo stages that are up to date")
    _add_scan_options(p)
    _add_plan_options(p)
    _add_backend_options(p)
    _add_diameter(p)
    _add_flips(p)
    _add_dask_options(p, threads=False)

    p = sub.add_parser("ingest", help="copy a scan into OUTDIR/<name>.ome.zarr, compute stats")
    p.add_argument("input", type=Path)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--name")
    p.add_argument("--force", action="store_true")
    _add_scan_options(p)
    _add_dask_options(p)

    p = sub.add_parser("plan", help="write the tile plan OUTDIR/work/tiles.json")
    p.add_argument("outdir", type=Path)
    _add_plan_options(p)
    p.add_argument("--backend", help="model (default) or classical")
    p.add_argument("--model", metavar="NAME|PATH")
    _add_diameter(p)
    _add_flips(p)

    p = sub.add_parser("segment-tiles", help="segment one batch of tiles")
    p.add_argument("outdir", type=Path)
    p.add_argument("--batch", required=True, help="batch name from the plan, e.g. b0000")
    p.add_argument("--force", action="store_true")
    _add_backend_options(p, defaults=False)

    p = sub.add_parser("stitch", help="stitch all batches into labels/cells")
    p.add_argument("outdir", type=Path)
    p.add_argument("--force", action="store_true")
    _add_dask_options(p)

    p = sub.add_parser("measure", help="write OUTDIR/cells.parquet")
    p.add_argument("outdir", type=Path)
    p.add_argument("--labels", default="cells", help="label image name (default cells)")
    p.add_argument("--force", action="store_true")
    p.add_argument(
        "--threads", type=int, metavar="N", help="chunks measured at once (default: all cores)"
    )
    _add_dask_options(p, threads=False)
    p.add_argument(
        "--ring-width",
        type=float,
        metavar="UM",
        help="width in µm of the ring around each cell for background intensities (default 2)",
    )
    p.add_argument(
        "--neighbor-radius",
        type=float,
        metavar="UM",
        help="radius in µm within which n_neighbors counts other cells (default 20)",
    )

    p = sub.add_parser("report", help="write the QC report OUTDIR/report.html")
    p.add_argument("outdirs", type=Path, nargs="+", metavar="OUTDIR", help="scan output folder(s)")
    p.add_argument(
        "--run",
        action="store_true",
        help="write one report for a run over all the given scans (to -o)",
    )
    p.add_argument("-o", "--output", type=Path, help="the run report's path (with --run)")
    p.add_argument("--table", type=Path, help="the run's combined table, linked (with --run)")

    p = sub.add_parser(
        "classify",
        help="cell classes OUTDIR/classes.parquet: positive-cell rules (IHC DAB, markers) "
        "and/or a classifier trained from cells labelled in napari",
    )
    p.add_argument("outdir", type=Path)
    p.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="SPEC",
        help="a positive-cell rule (repeatable): dab, dab-ring, marker:CH[:METHOD] or "
        "[NAME=]COLUMN>THRESHOLD, THRESHOLD a number, otsu, otsu-log, li, triangle, or "
        "T1,T2,T3 for 1+/2+/3+ (README: Cell classes)",
    )
    p.add_argument("--rules", type=Path, metavar="FILE.yaml", help="a YAML file of rules")
    p.add_argument(
        "--train",
        action="store_true",
        help="fit a classifier on the cells labelled in napari (review/class_labels.jsonl), "
        "print its cross-validated accuracy, save it (OUTDIR/classifier.skops) and apply it",
    )
    p.add_argument("--classifier", type=Path, metavar="PATH", help="apply a saved classifier")
    p.add_argument(
        "--save-classifier", type=Path, metavar="PATH", help="where --train saves the classifier"
    )

    p = sub.add_parser(
        "export",
        help="export cell tables to CSV or AnnData, join them into one table, "
        "or export a scan's cell outlines as GeoJSON (QuPath)",
    )
    p.add_argument(
        "inputs", type=Path, nargs="+", metavar="TABLE", help="cells.parquet files or OUTDIRs"
    )
    p.add_argument(
        "-o", "--output", type=Path, help="output file (default: beside the first table)"
    )
    p.add_argument(
        "--format",
        choices=["csv", "anndata", "parquet", "geojson", "spatialdata", "ome-zarr"],
        help="csv, anndata (.h5ad), parquet or geojson (default: from the output's suffix, "
        "else csv); several tables are joined with a scan column; geojson: one OUTDIR's "
        "cell outlines for QuPath; spatialdata: OUTDIRs' images, labels, outlines and "
        "table in one SpatialData store (-o X.zarr); ome-zarr: one OUTDIR's image and "
        "labels copied as NGFF --ome-zarr-version (-o X.ome.zarr)",
    )
    p.add_argument(
        "--ome-zarr-version",
        choices=["0.4", "0.5"],
        default="0.4",
        help="NGFF version of --format ome-zarr: 0.4 (Zarr v2, for viewers that do not "
        "read 0.5 yet; the default) or 0.5 (Zarr v3, as the pipeline writes)",
    )

    p = sub.add_parser(
        "export-model",
        help="write a model as a bioimage.io package (.zip) that --model also takes",
    )
    p.add_argument("model", metavar="NAME|PATH", help="shipped model name or model folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="the package (FILE.zip)")

    p = sub.add_parser(
        "export-training",
        help="write the corrected regions as training data (image/label TIFF pairs + index.json)",
    )
    p.add_argument("outdir", type=Path, help="a result folder (or its .ome.zarr) with corrections")
    p.add_argument("-o", "--dest", type=Path, help="training data folder (default OUTDIR/training)")
    p.add_argument(
        "--pad", type=int, default=0, metavar="N", help="pixels of context around each region"
    )

    p = sub.add_parser("synth", help="write a synthetic scan and its ground-truth labels")
    p.add_argument("output", type=Path, help="image path (.ome.tif)")
    p.add_argument("--labels", type=Path, help="labels path (default <output>_labels.tif)")
    p.add_argument("--shape", type=int, nargs="+", required=True, metavar="N", help="Y X or Z Y X")
    p.add_argument(
        "--pixel-size",
        type=float,
        nargs="+",
        metavar="UM",
        help="µm per axis (default 0.5 in-plane, 2 in z)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--modality",
        choices=("fluorescence", "brightfield"),
        default="fluorescence",
        help="fluorescence nuclei (default) or a brightfield RGB scan (2D)",
    )
    p.add_argument(
        "--stain", choices=("he", "hdab"), default="he", help="brightfield: H&E or IHC (DAB)"
    )
    p.add_argument(
        "--dab-fraction", type=float, metavar="F", help="IHC: share of DAB-positive cells"
    )
    p.add_argument(
        "--slide",
        nargs="?",
        const="svs",
        metavar="FLAVOUR",
        help="brightfield: write a tiled JPEG pyramidal TIFF with scanner metadata, tissue "
        "with glass around it (svs, the default; pyramidal-tiff, ome-tiff, ndpi-like)",
    )

    p = sub.add_parser("train", help="train or fine-tune a model from a YAML config")
    p.add_argument("config", type=Path, help="training config (see cellseg.segmentation.training)")
    p.add_argument("--device", default=DEFAULTS["device"], choices=DEVICES)

    p = sub.add_parser("evaluate", help="instance matching of a prediction against truth")
    p.add_argument("gt", type=Path, help="ground-truth label image")
    p.add_argument("pred", type=Path, help="predicted label image (or a result folder)")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        metavar="IOU",
        help="IoU thresholds (default 0.5 0.55 ... 0.95)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _run(args: argparse.Namespace) -> int:
    from cellseg import stages  # the stages import every library: only when a command runs

    show = not args.quiet
    if args.command == "segment":
        out = stages.segment(
            args.input,
            args.outdir,
            tile_size=_tile_size(args.tile_size),
            overlap=args.overlap,
            pixel_size=args.pixel_size,
            channel=args.channel,
            modality=args.modality,
            backend=args.backend,
            model=args.model,
            diameter=args.diameter,
            flips=args.flips,
            level=args.level,
            device=args.device,
            batch_size=args.batch_size,
            tiles_per_batch=args.tiles_per_batch,
            threads=args.threads,
            name=args.name,
            show_progress=show,
            force=args.force,
        )
        print(f"{out['n_cells']} cells")
        print(f"image:  {out['image']}")
        print(f"labels: {out['labels']}")
        print(f"table:  {out['table']}")
        print(f"report: {out['report']}")
    elif args.command == "ingest":
        info = stages.ingest(
            args.input,
            args.outdir,
            name=args.name,
            pixel_size=args.pixel_size,
            channel=args.channel,
            modality=args.modality,
            force=args.force,
        )
        print(Path(args.outdir) / info["image"])
    elif args.command == "plan":
        content = stages.plan(
            args.outdir,
            tile_size=_tile_size(args.tile_size),
            overlap=args.overlap,
            tiles_per_batch=args.tiles_per_batch,
            backend=args.backend,
            model=args.model,
            diameter=args.diameter,
            flips=args.flips,
            level=args.level,
        )
        print(f"{len(content['tiles'])} tiles in {len(content['batches'])} batches")
    elif args.command == "segment-tiles":
        path = stages.segment_tiles(
            args.outdir,
            args.batch,
            backend=args.backend,
            model=args.model,
            device=args.device,
            batch_size=args.batch_size,
            threads=args.threads,
            force=args.force,
            show_progress=show,
        )
        print(path)
    elif args.command == "stitch":
        summary = stages.stitch(args.outdir, show_progress=show, force=args.force)
        print(f"{summary['n_cells']} cells -> {summary['labels']}")
    elif args.command == "measure":
        print(
            stages.measure(
                args.outdir,
                labels=args.labels,
                threads=args.threads,
                ring_width_um=args.ring_width,
                neighbor_radius_um=args.neighbor_radius,
                show_progress=show,
                force=args.force,
            )
        )
    elif args.command == "report":
        if args.run:
            from cellseg.report import write_run_report

            if args.output is None:
                raise CellsegError("--run needs -o/--output, e.g. -o results/report.html")
            print(write_run_report(args.outdirs, args.output, table=args.table))
        else:
            if args.output is not None or len(args.outdirs) > 1:
                raise CellsegError(
                    "a scan's report is written to OUTDIR/report.html; give one OUTDIR, "
                    "or --run -o FILE for a report over several scans"
                )
            print(stages.report(args.outdirs[0]))
    elif args.command == "classify":
        result = stages.classify(
            args.outdir,
            rules=args.rule,
            rules_file=args.rules,
            train=args.train,
            classifier=args.classifier,
            save_to=args.save_classifier,
        )
        _print_classes(result)
    elif args.command == "export":
        from cellseg.export import export_tables

        print(
            export_tables(
                args.inputs, args.output, fmt=args.format, ome_zarr_version=args.ome_zarr_version
            )
        )
    elif args.command == "export-model":
        from cellseg.segmentation.bioimageio import export_model

        print(export_model(args.model, args.output))
    elif args.command == "export-training":
        from cellseg.review import export_training, read_training_index

        index = export_training(args.outdir, args.dest, pad=args.pad)
        print(f"{len(read_training_index(index.parent)['samples'])} samples -> {index}")
    elif args.command == "synth":
        from cellseg.synth import write_brightfield_scan, write_synthetic_scan

        labels = args.labels or args.output.with_name(scan_name(args.output) + "_labels.tif")
        shape = tuple(args.shape)
        if len(shape) not in (2, 3):
            raise CellsegError(f"--shape takes 2 (Y X) or 3 (Z Y X) values, got {len(shape)}")
        kwargs = {"spacing": tuple(args.pixel_size)} if args.pixel_size else {}
        if args.modality == "brightfield":
            if len(shape) != 2:
                raise CellsegError("a brightfield scan is 2D: give --shape Y X")
            kwargs |= {"stain": args.stain, "slide": args.slide}
            if args.dab_fraction is not None:
                kwargs["dab_fraction"] = args.dab_fraction
            write = write_brightfield_scan
        elif args.slide or args.dab_fraction is not None or args.stain != "he":
            raise CellsegError("--stain, --dab-fraction and --slide need --modality brightfield")
        else:
            write = write_synthetic_scan
        img, lab = write(args.output, labels, shape=shape, seed=args.seed, **kwargs)
        print(img)
        print(lab)
    elif args.command == "train":
        from cellseg.segmentation.training import train

        summary = train(args.config, device=args.device, show_progress=show)
        print(f"best validation AP50 {summary['best_val_ap50']:.3f} -> {summary['out']}")
    elif args.command == "evaluate":
        from cellseg.evaluate import evaluate_paths, format_table
        from cellseg.metrics import DEFAULT_THRESHOLDS

        result = evaluate_paths(
            args.gt, args.pred, thresholds=args.thresholds or DEFAULT_THRESHOLDS
        )
        print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _print_classes(result: dict) -> None:
    """What `cellseg classify` did: the classifier's accuracy, thresholds, counts, files."""
    model = result["classifier"]
    if model is not None:
        m = model["metrics"]
        if "cv_accuracy" in m:
            print(
                f"classifier: {m['n_labelled']} labelled cells, {m['cv_folds']}-fold "
                f"cross-validated accuracy {m['cv_accuracy']:.3f}"
            )
            print("confusion (rows true, columns predicted): " + ", ".join(model["classes"]))
            for name, row in zip(model["classes"], m["confusion"]):
                print(f"  {name:>16} " + " ".join(f"{v:5d}" for v in row))
        print(f"classifier: {model['path']}")
    for rule in result["rules"]:
        threshold = (
            "none (constant values)" if rule["threshold"] is None else f"{rule['threshold']:.4g}"
        )
        print(f"rule {rule['name']}: {rule['column']} > {threshold} ({rule['method']})")
    summary = result["summary"]
    for c in summary["classes"]:
        print(f"{c['name']}: {c['count']} ({c['percent']:.1f} %)")
    if summary["positive_percent"] is not None:
        print(f"positive: {summary['positive_percent']:.1f} %")
    if summary["h_score"] is not None:
        print(f"H-score: {summary['h_score']:.1f}")
    print(f"classes: {result['classes']}")
    if result["report"] is not None:
        print(f"report:  {result['report']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command != "train":  # training streams no chunks, its tensors want a roomy heap
        keep_heap_flat()
    allow_processes()  # this entry point's main module is guarded
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        with lock_wait(args.wait_lock), _dask_context(args):
            return _run(args)
    except CellsegError as exc:
        print(f"cellseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        outputs = [getattr(args, k, None) for k in ("outdir", "output", "dest")]
        full = disk_full_error(exc, next((o for o in outputs if o), None))
        if full is None:
            raise
        print(f"cellseg {args.command}: error: {full}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
