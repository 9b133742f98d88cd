"""``geopsp model quantize MODEL --calibrate SCENE ... --out model.int8.onnx``: an int8 ONNX model."""

from __future__ import annotations

import click

from geopsp.cli.options import overwrite_option

__all__ = ["quantize"]

_MAX_TILES = 32  # geopsp.model.quantize.DEFAULT_MAX_TILES (not imported: `geopsp model --help` stays light)


@click.command("quantize")
@click.argument("model", metavar="BUNDLE_OR_ONNX", type=click.Path())
@click.option(
    "--calibrate",
    "scenes",
    metavar="SCENE",
    multiple=True,
    required=True,
    type=click.Path(),
    help="A scene like those the model will segment (repeat for more); calibration and check tiles come from them.",
)
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="File to write (.onnx).")
@click.option(
    "--max-tiles",
    type=click.IntRange(min=1),
    default=_MAX_TILES,
    show_default=True,
    help="Most calibration tiles, and most check tiles.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime threads [default: all CPUs].")
@click.option("--stac/--no-stac", default=True, show_default=True, help="Also write a STAC MLM item (<out>.json).")
@overwrite_option
def quantize(
    model: str, scenes: tuple[str, ...], out: str, max_tiles: int, threads: int | None, stac: bool, overwrite: bool
) -> None:
    """Quantize BUNDLE_OR_ONNX (a bundle, or its fp32 ONNX export) to int8 for ONNX Runtime on CPUs.

    Calibrates on tiles of the --calibrate scenes, then checks on other tiles of them how often
    the int8 model gives the fp32 model's class (valid pixels only). Prints the written files,
    one per line; the agreement goes to stderr. Below the 99 % gate the model is written all the
    same, with a warning (and its agreement in its metadata, so `geopsp predict` warns too).
    """
    from pathlib import Path

    from geopsp.model.quantize import quantize_onnx

    if not str(out).lower().endswith(".onnx"):
        raise click.BadParameter(f"{out} must end in .onnx", param_hint="--out")
    result = quantize_onnx(model, list(scenes), out, max_tiles=max_tiles, overwrite=overwrite, threads=threads)
    q = result.info.quantization
    kept = "+".join(q["keep_fp32"]) + " in fp32" if q["keep_fp32"] else "every node int8"
    size = Path(result.path).stat().st_size
    gate = "" if result.passed else f"; below the {q['gate']:.0%} gate, written anyway"
    click.echo(
        f"{result.path.name}: int8 classes agree with fp32 on {result.agreement:.3%} of {result.pixels} valid pixels "
        f"of {q['check_tiles']} {q['check']} (from {len(q['scenes'])} scene(s); calibrated on "
        f"{q['calibration_tiles']} tiles; {q['method']}, {kept}, {7 if q['reduce_range'] else 8}-bit weights; "
        f"{size / 1e6:.1f} MB){gate}",
        err=True,
    )
    click.echo(str(result.path))
    if stac:
        from geopsp.model.stac_mlm import write_mlm_item

        click.echo(str(write_mlm_item(result.path, overwrite=overwrite)))
