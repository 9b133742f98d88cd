"""``geopsp vectorize CLASS_RASTER --out FILE``."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from geopsp.cli.options import config_options, load_cli_config, overwrite_option
from geopsp.cli.progress import Reporter, progress_option

__all__ = ["vectorize"]

_FORMATS = ("gpkg", "geojson", "fgb", "shp", "parquet")


@click.command()
@click.argument("class_raster", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output file; the suffix picks the format (.gpkg, .geojson, .fgb, .shp, .parquet). "
    "An s3://bucket/key uploads it (and its .qml) once written.",
)
@click.option("--format", "fmt", type=click.Choice(_FORMATS), default=None, help="Format when the suffix does not say.")
@click.option("--layer", default=None, help="Layer name [default: the output's file stem].")
@click.option("--block-rows", type=int, default=None, help="Rows polygonized at a time [default: 1024].")
@click.option("--simplify", type=float, default=None, help="Coverage simplification tolerance in map units [0: off].")
@click.option("--sieve-px", type=int, default=None, help="Merge regions smaller than this many pixels [0: off].")
@click.option("--min-area", "min_area_m2", type=float, default=None, help="Merge polygons below this many m2 [0: off].")
@click.option("--fill-holes", "fill_holes_m2", type=float, default=None, help="Fill holes below this many m2 [0: off].")
@click.option(
    "--confidence",
    "confidence",
    type=click.Path(dir_okay=False),
    default=None,
    help="Confidence raster of the same run (<stem>_probability.tif): adds conf_mean and conf_min.",
)
@click.option(
    "--disagreement",
    "disagreement",
    type=click.Path(dir_okay=False),
    default=None,
    help="Tile disagreement raster of the same run (<stem>_disagreement.tif): adds disagree_frac.",
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Merge polygons whose conf_mean is below this into their longest-border neighbour (needs --confidence).",
)
@click.option(
    "--style",
    type=click.Choice(["classes", "confidence"]),
    default=None,
    help="Default QGIS style: by class, or graduated by conf_mean (needs --confidence) [default: classes].",
)
@click.option("--connectivity", type=click.Choice(["4", "8"]), default=None, help="Pixel connectivity [default: 4].")
@click.option(
    "--skip-class", "skip_classes", type=int, multiple=True, help="Class id that makes no polygons (repeatable)."
)
@click.option("--workers", type=int, default=None, help="Processes polygonizing strips [0: one per CPU].")
@click.option(
    "--classes",
    "classes_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Class table (YAML/JSON) [default: the one stored in the raster].",
)
@click.option("--scene", default=None, help="Value of the 'scene' attribute [default: from the raster].")
@overwrite_option
@config_options
@progress_option("vectorize")
@click.pass_context
def vectorize(
    ctx: click.Context,
    class_raster: str,
    out: str,
    fmt: str | None,
    layer: str | None,
    block_rows: int | None,
    simplify: float | None,
    sieve_px: int | None,
    min_area_m2: float | None,
    fill_holes_m2: float | None,
    confidence: str | None,
    disagreement: str | None,
    min_confidence: float | None,
    style: str | None,
    connectivity: str | None,
    skip_classes: tuple[int, ...],
    workers: int | None,
    classes_path: str | None,
    scene: str | None,
    overwrite: bool,
    config_path: str | None,
    set_items: tuple[str, ...],
    report: Reporter,
) -> None:
    """Turn a class raster into land-use polygons (one per connected region, seamless).

    CLASS_RASTER is a local file, an http(s):// or s3:// URL, or a GDAL /vsi.../ path. Writes
    OUT with class_id, class_name, area_m2, perimeter_m and scene attributes, a QGIS style
    (inside a GeoPackage, and as a .qml sidecar next to OUT), and a Shapefile's .shx, .dbf,
    .prj and .cpg. Stdout lists every file written, OUT first, one per line; they appear
    together. OUT may be an s3://bucket/key: all are uploaded once written, OUT last. With
    --confidence (and --disagreement), the QA rasters of the same run, each polygon also gets
    conf_mean, conf_min (and disagree_frac), and a GeoPackage a second, "confidence" style.
    """
    from geopsp.io.atomic import StagedOutputs
    from geopsp.io.s3 import S3Destination, is_s3_uri
    from geopsp.io.source import scene_name
    from geopsp.io.vector import vector_files
    from geopsp.vectorize import vectorize as run

    cfg = load_cli_config(
        config_path,
        set_items,
        **{
            "vectorize.format": fmt,
            "vectorize.block_rows": block_rows,
            "vectorize.simplify": simplify,
            "vectorize.sieve_px": sieve_px,
            "vectorize.min_area_m2": min_area_m2,
            "vectorize.fill_holes_m2": fill_holes_m2,
            "vectorize.min_confidence": min_confidence,
            "vectorize.style": style,
            "vectorize.connectivity": int(connectivity) if connectivity else None,
            "vectorize.skip_classes": list(skip_classes) if skip_classes else None,
            "vectorize.workers": workers,
        },
    )
    classes = None
    if classes_path:
        from geopsp.classes import ClassTable

        classes = ClassTable.from_file(classes_path)
    verbosity = int((ctx.obj or {}).get("verbosity", 0)) if ctx.obj is not None else 0
    with contextlib.ExitStack() as stack:
        dest = None
        if is_s3_uri(out):  # written into a staging folder, uploaded once complete (the .qml first)
            dest = stack.enter_context(S3Destination.staged(out, overwrite=overwrite))
            dest.check_absent([*vector_files(dest.local, existing=False), dest.local.with_suffix(".qml")])
            out, overwrite = str(dest.local), False
        report.start(class_raster)
        with (
            report.bar(scene_name(class_raster), unit="rows", enabled=verbosity >= 0 and sys.stderr.isatty()) as bar,
            StagedOutputs(overwrite=overwrite) as staged,
        ):
            path = run(
                class_raster,
                out,
                config=cfg.vectorize,
                classes=classes,
                scene=scene,
                progress=bar,
                layer=layer,
                confidence=confidence,
                disagreement=disagreement,
                outputs=staged,
            )
            files = sorted(staged.commit(), key=lambda p: p != path)
        if dest is not None:  # OUT last: its presence says the rest is there
            dest.upload(files[1:], marker=path)
        shown = [str(p) if dest is None else dest.uri_of(p) for p in files]
        report.outputs({_output_name(p, path): where for p, where in zip(files, shown, strict=True)})
    for location in shown:
        click.echo(location)


def _output_name(file: Path, vector: Path) -> str:
    """Name a written file in ``output`` events: ``vector``, ``vector_qml``, ``vector_dbf`` ..."""
    return "vector" if file == vector else f"vector_{file.suffix.lstrip('.')}"
