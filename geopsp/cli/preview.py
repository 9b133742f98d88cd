"""``geopsp preview SCENE CLASS_RASTER --out quicklook.png``."""

from __future__ import annotations

import click

from geopsp.cli.options import overwrite_option

__all__ = ["preview"]


def _parse_bands(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        bands = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected 1-based band numbers like 3,2,1, got {value!r}") from None
    if not 1 <= len(bands) <= 3 or min(bands) < 1:
        raise click.BadParameter(f"give one to three band numbers >= 1 (red,green,blue), got {value!r}")
    return bands


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@click.argument("class_raster", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output PNG.")
@click.option("--bands", callback=_parse_bands, default=None, help="Bands shown as red,green,blue, e.g. 3,2,1.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.45, show_default=True, help="Class opacity.")
@click.option("--outlines", is_flag=True, help="Draw the borders between classes.")
@click.option("--max-size", type=click.IntRange(16, 65536), default=2048, show_default=True, help="Longest edge in px.")
@click.option("--no-legend", is_flag=True, help="Leave out the legend.")
@click.option(
    "--background",
    "background",
    multiple=True,
    metavar="CLASS",
    help="Class (id or name) left unpainted so the scene shows through (repeatable; 'none': paint every class) "
    "[default: the classes named background, nodata, unlabeled, void or unknown].",
)
@click.option(
    "--classes",
    "classes_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Class table (YAML/JSON) [default: the one stored in the class raster].",
)
@overwrite_option
def preview(
    scene: str,
    class_raster: str,
    out: str,
    bands: tuple[int, ...] | None,
    alpha: float,
    outlines: bool,
    max_size: int,
    no_legend: bool,
    background: tuple[str, ...],
    classes_path: str | None,
    overwrite: bool,
) -> None:
    """Render SCENE with the classes of CLASS_RASTER blended over it to a PNG (prints its path).

    The scene is stretched between its 2nd and 98th percentiles per band and read decimated,
    so memory stays small for any scene size. SCENE and CLASS_RASTER are local files,
    http(s):// or s3:// URLs, or GDAL /vsi.../ paths.

    Background classes get no colour, so the scene shows through them: by default those
    named background, nodata, unlabeled, void or unknown (case and - or _ do not matter),
    else the ones given with --background. The legend lists every class of the table.
    """
    from geopsp.preview import render_preview

    classes = None
    if classes_path:
        from geopsp.classes import ClassTable

        classes = ClassTable.from_file(classes_path)
    path = render_preview(
        scene,
        class_raster,
        out,
        bands=bands,
        alpha=alpha,
        outlines=outlines,
        max_size=max_size,
        classes=classes,
        overwrite=overwrite,
        legend=not no_legend,
        background=_background(background),
    )
    click.echo(str(path))


def _background(values: tuple[str, ...]) -> list[str] | None:
    """``--background`` values: none given -> the default rule; ``none`` -> no background class."""
    if not values:
        return None
    return [] if [v.strip().lower() for v in values] == ["none"] else list(values)
