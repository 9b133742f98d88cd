"""``geopsp evaluate PREDICTION REFERENCE`` and ``geopsp evaluate --model BUNDLE --scene SCENE REFERENCE``."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from geopsp.cli.options import config_options, load_cli_config, overwrite_option
from geopsp.cli.progress import Reporter, progress_option

__all__ = ["evaluate"]


@click.command("evaluate")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "-m",
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Model bundle or .onnx: segment --scene with it first, then score the result against REFERENCE.",
)
@click.option("--scene", type=click.Path(dir_okay=False), default=None, help="Scene to segment (with --model).")
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for report.json, classes.csv, confusion.csv and confusion.png "
    "(and the prediction with --model) [default: the JSON report on stdout]; "
    "s3://bucket/prefix/ uploads them once complete, report.json last.",
)
@click.option(
    "--classes",
    "classes_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Class table YAML/JSON [default: the one stored in the prediction, or the bundle's].",
)
@click.option("--field", default=None, help="Vector reference: attribute holding the class id.")
@click.option("--burn-value", type=int, default=None, help="Vector reference: class id of every polygon (footprints).")
@click.option(
    "--background",
    type=int,
    default=None,
    help="Vector reference: class id of pixels no polygon covers [default: unlabeled, excluded].",
)
@click.option(
    "--ignore-value",
    "ignore_values",
    type=float,
    multiple=True,
    help="Reference value meaning unlabeled (repeatable), e.g. --ignore-value 0.",
)
@click.option("--all-touched", is_flag=True, help="Vector reference: burn every pixel a polygon touches.")
@click.option(
    "--buildings", is_flag=True, help="Also score building footprints (SpaceNet F1, polygon IoU >= 0.5, one-to-one)."
)
@click.option(
    "--building-class",
    type=int,
    default=None,
    help="Class id of buildings [default: the class named 'building', else 1].",
)
@click.option("--iou-threshold", type=float, default=0.5, show_default=True, help="Footprint match threshold.")
@click.option(
    "--min-area-px", type=float, default=0.0, show_default=True, help="Ignore footprints smaller than this many pixels."
)
@click.option("--block-rows", type=int, default=512, show_default=True, help="Rows scored at a time.")
@overwrite_option
@config_options
@progress_option("evaluate")
def evaluate(
    inputs: tuple[str, ...],
    model_path: str | None,
    scene: str | None,
    out: str | None,
    classes_path: str | None,
    field: str | None,
    burn_value: int | None,
    background: int | None,
    ignore_values: tuple[float, ...],
    all_touched: bool,
    buildings: bool,
    building_class: int | None,
    iou_threshold: float,
    min_area_px: float,
    block_rows: int,
    overwrite: bool,
    config_path: str | None,
    set_items: tuple[str, ...],
    report: Reporter,
) -> None:
    """Score a class raster against reference labels.

    The reference is a raster, or a vector reprojected and rasterized onto the prediction's grid.
    PREDICTION, REFERENCE and --scene are local files, http(s):// or s3:// URLs, or GDAL
    /vsi.../ paths.

    Reports per-class IoU, F1, producer's and user's accuracy, mIoU, overall accuracy,
    Cohen's kappa and the confusion matrix; unlabeled and nodata pixels are excluded and
    classes absent from both sides are reported as "absent", not as perfect. --buildings adds
    object-level precision, recall and F1 of the footprints (true/false positives, false
    negatives, the IoU threshold) under "buildings". With --out, stderr summarizes the scores
    (mIoU, OA and the building scores).
    """
    from geopsp.classes import ClassTable

    if model_path is not None:
        if scene is None or len(inputs) != 1:
            raise click.UsageError("with --model give --scene SCENE and exactly one REFERENCE")
    elif scene is not None:
        raise click.UsageError("--scene needs --model")
    elif len(inputs) != 2:
        raise click.UsageError("give PREDICTION and REFERENCE (or --model BUNDLE --scene SCENE REFERENCE)")
    if block_rows < 1:
        raise click.BadParameter("must be >= 1", param_hint="--block-rows")
    reference = inputs[-1]
    classes: ClassTable | None = ClassTable.from_file(classes_path) if classes_path else None
    opts = {
        "buildings": buildings,
        "burn_value": burn_value,
        "background": background,
        "field": field,
        "building_class": building_class,
        "ignore_values": ignore_values,
        "all_touched": all_touched,
        "block_rows": block_rows,
        "iou_threshold": iou_threshold,
        "min_area_px": min_area_px,
    }
    from geopsp.eval.report import REPORT_NAMES
    from geopsp.io.s3 import S3Destination, is_s3_uri

    report.start(scene if scene is not None else inputs[0])
    with contextlib.ExitStack() as stack:
        dest = None
        if out is not None and is_s3_uri(out):  # made in a staging folder, uploaded once complete, report.json last
            dest = stack.enter_context(S3Destination.staged(out, overwrite=overwrite))
            dest.check_absent([dest.local / n for n in REPORT_NAMES])
        local_out = str(dest.local) if dest is not None else out
        predicted: dict[str, Path] = {}
        if model_path is None or scene is None:  # (a model comes with a scene: checked above)
            written = _score(inputs[0], reference, classes, {}, local_out, overwrite and dest is None, opts)
        else:
            predicted, written = _predict_and_score(
                model_path, scene, reference, classes, out, dest, overwrite, opts, config_path, set_items, report
            )
        files = {**predicted, **{_output_name(p): p for p in written}}
        if dest is not None and written:  # the prediction's set too, the report last
            shown = dest.upload_all(marker=dest.local / "report.json")
            report.outputs({k: dest.uri_of(p) for k, p in files.items()})
        else:
            shown = [str(p) for p in written]
            report.outputs(files)
    if shown:
        click.echo(f"wrote {', '.join(shown)}", err=True)


def _predict_and_score(
    model_path: str,
    scene: str,
    reference: str,
    classes: Any,
    out: str | None,
    dest: Any,
    overwrite: bool,
    opts: dict[str, Any],
    config_path: str | None,
    set_items: tuple[str, ...],
    reporter: Reporter,
) -> tuple[dict[str, Path], list[Path]]:
    """Segment ``scene`` (into ``out``, the staging folder of ``dest``, or a temporary folder), then score it.

    Returns the prediction's outputs (none for a temporary folder) and the report's files, as :func:`_score`.
    """
    import tempfile

    from geopsp.inference.plan import check_inputs
    from geopsp.inference.runtime import is_onnx_model, model_meta
    from geopsp.io.source import scene_name
    from geopsp.pipeline import segment_raster

    conf = load_cli_config(config_path, set_items)
    if dest is not None:  # the prediction's objects are refused before any work, as the report's
        check_inputs(scene, model_meta(model_path), dest.uri, config=conf.predict, overwrite=overwrite)
    bundle: Any = model_path
    if not is_onnx_model(model_path):
        from geopsp.model.bundle import load_bundle

        bundle = load_bundle(model_path)
    report: dict[str, Any] = {"model": str(model_path), "scene": str(scene)}
    classes = classes or model_meta(bundle).classes
    with contextlib.ExitStack() as stack:
        if dest is not None:
            where, replace, report_dir = dest.local, False, str(dest.local)
        elif out is not None:
            where, replace, report_dir = Path(out), overwrite, out
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="geopsp-eval-"))
            where, replace, report_dir = Path(tmp), True, None
        with reporter.bar(scene_name(scene), unit="tiles", enabled=sys.stderr.isatty()) as progress:
            result = segment_raster(scene, bundle, where, config=conf.predict, overwrite=replace, progress=progress)
        reporter.device(result.summary["device"])
        written = _score(str(result.classes), reference, classes, report, report_dir, overwrite and dest is None, opts)
        return ({} if report_dir is None else result.outputs), written


def _score(
    prediction: str,
    reference: str,
    classes: Any,
    report: dict[str, Any],
    out: str | None,
    overwrite: bool,
    opts: dict[str, Any],
) -> list[Path]:
    """Score ``prediction``; write the report into ``out`` (returning its files), else print it on stdout."""
    from geopsp.eval.buildings import evaluate_buildings
    from geopsp.eval.raster import evaluate_rasters, is_vector_path
    from geopsp.eval.report import write_report

    buildings: bool = opts["buildings"]
    burn_value = opts["burn_value"]
    background = opts["background"]
    field = opts["field"]
    evaluation = None
    building_id = opts["building_class"]
    if buildings:
        from geopsp.eval.raster import resolve_class_table

        table = classes or resolve_class_table(None, prediction, block_rows=opts["block_rows"])
        if building_id is None:
            named = [c.id for c in table if c.name.lower() in ("building", "buildings")]
            building_id = named[0] if named else 1
        classes = table
        if is_vector_path(reference) and field is None and burn_value is None:
            burn_value = building_id
            if background is None and len(table) == 2:
                background = next(c.id for c in table if c.id != building_id)
    evaluation = evaluate_rasters(
        prediction,
        reference,
        classes=classes,
        ignore_values=opts["ignore_values"],
        field=field,
        burn_value=burn_value,
        background=background,
        all_touched=opts["all_touched"],
        block_rows=opts["block_rows"],
    )
    report.update(evaluation.to_dict())
    if buildings:
        bscores = evaluate_buildings(
            prediction,
            reference,
            building_values=(building_id,),
            iou_threshold=opts["iou_threshold"],
            min_area_px=opts["min_area_px"],
        )
        report["buildings"] = {"class_id": building_id, **bscores.to_dict()}
    if out is not None:
        paths = write_report(out, report, evaluation.scores, overwrite=overwrite)
        for line in _console_lines(report):
            click.echo(line, err=True)
        return list(paths.values())
    json.dump(report, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    return []


def _console_lines(report: dict[str, Any]) -> list[str]:
    """Summarize a report for stderr: the pixel scores, then (with ``--buildings``) the footprint scores."""
    lines = [f"mIoU {_r(report.get('miou'))}  OA {_r(report.get('overall_accuracy'))}"]
    b = report.get("buildings")
    if b is not None:
        lines.append(
            f"buildings (class {b['class_id']}, objects matched at IoU >= {b['iou_threshold']:g}): "
            f"precision {_r(b['precision'], 'n/a')}  recall {_r(b['recall'], 'n/a')}  F1 {_r(b['f1'], 'n/a')}  "
            f"TP {b['true_positives']}  FP {b['false_positives']}  FN {b['false_negatives']}"
        )
    return lines


def _output_name(path: Path) -> str:
    """Name a report file in ``output`` events: ``report``, ``classes_csv``, ``confusion_png`` ..."""
    return "report" if path.name == "report.json" else path.name.replace(".", "_")


def _r(v: Any, missing: Any = None) -> Any:
    return missing if v is None else round(float(v), 4)
