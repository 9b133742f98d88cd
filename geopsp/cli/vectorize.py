"""``geopsp vectorize CLASS_RASTER --out FILE``."""

from __future__ import annotations

import contextlib
import sys

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
    (inside a GeoPackage, and as a .qml sidecar next to OUT), and prints its path. OUT may be
    an s3://bucket/key: both are uploaded once written, OUT last.
    """
    from geopsp.io.s3 import S3Destination, is_s3_uri
    from geopsp.io.source import scene_name
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
            dest.check_absent([dest.local, dest.local.with_suffix(".qml")])
            out, overwrite = str(dest.local), False
        report.start(class_raster)
        name = scene_name(class_raster)
        with report.bar(name, unit="rows", enabled=verbosity >= 0 and sys.stderr.isatty()) as progress:
            path = run(
                class_raster,
                out,
                config=cfg.vectorize,
                classes=classes,
                scene=scene,
                overwrite=overwrite,
                progress=progress,
                layer=layer,
            )
        if dest is None:
            qml = path.with_suffix(".qml")
            written = [str(path), *([str(qml)] if qml.is_file() else [])]
        else:
            uploaded = dest.upload_all(marker=path)
            written = uploaded[-1:] + [u for u in uploaded[:-1] if u.endswith(".qml")]
        shown = written[0]
        report.outputs(dict(zip(("vector", "vector_qml"), written, strict=False)))
    click.echo(shown)
