"""``geopsp model export BUNDLE --format onnx --out model.onnx``: a self-describing ONNX model."""

from __future__ import annotations

import click

from geopsp.cli.options import overwrite_option

__all__ = ["export"]


@click.command("export")
@click.argument("bundle", type=click.Path())
@click.option(
    "--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="What to export to."
)
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="File to write (.onnx).")
@click.option(
    "--tile-size",
    type=click.IntRange(min=32, max=8192),
    default=None,
    help="The graph's fixed tile edge in px [default: the bundle's tile size].",
)
@click.option(
    "--margin-px",
    type=click.IntRange(min=0, max=256),
    default=None,
    help="Reflection margin built into the graph [default: predict.margin_px's default, 16].",
)
@click.option("--stac/--no-stac", default=True, show_default=True, help="Also write a STAC MLM item (<out>.json).")
@overwrite_option
def export(
    bundle: str, fmt: str, out: str, tile_size: int | None, margin_px: int | None, stac: bool, overwrite: bool
) -> None:
    """Export BUNDLE to ONNX with its full metadata (and the keys Deepness/GeoDeep read).

    Prints the written files, one per line; the export check (ONNX Runtime vs torch classes on
    a check batch) and whether the model runs in Deepness go to stderr.
    """
    from geopsp.model.onnx_export import export_onnx

    if not str(out).lower().endswith(".onnx"):
        raise click.BadParameter(f"{out} must end in .onnx", param_hint="--out")
    result = export_onnx(bundle, out, tile_size=tile_size, margin_px=margin_px, overwrite=overwrite)
    check = result.info.check
    click.echo(
        f"{result.path.name}: {result.info.tile_size} px tiles, margin {result.info.margin_px} px; classes agree with "
        f"torch on {check['agreement']:.5%} of {check['pixels']} check pixels (max probability difference "
        f"{check['max_abs_diff']:.1e})",
        err=True,
    )
    if result.deepness is not None:
        click.echo(f"{result.path.name}: not runnable in Deepness/GeoDeep as is: {result.deepness}", err=True)
    click.echo(str(result.path))
    if stac:
        from geopsp.model.stac_mlm import write_mlm_item

        click.echo(str(write_mlm_item(result.path, overwrite=overwrite)))
