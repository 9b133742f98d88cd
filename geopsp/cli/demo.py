"""``geopsp demo``: the quick start, end to end on synthetic data."""

from __future__ import annotations

import json
import sys

import click

from geopsp.cli.options import overwrite_option

__all__ = ["demo"]


@click.command()
@click.option(
    "--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--train-minutes", default=3.0, show_default=True, type=click.FloatRange(0.1, 600), help="Training time budget."
)
@click.option(
    "--size",
    "predict_size",
    default=2048,
    show_default=True,
    type=click.IntRange(64, 100000),
    help="Edge of the predicted scene (px).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the scenes and the training.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@overwrite_option
def demo(out_dir: str, train_minutes: float, predict_size: int, seed: int, as_json: bool, overwrite: bool) -> None:
    """Run the whole job offline: scenes -> training -> tiled prediction -> polygons -> scores -> preview.

    Generates synthetic 4-band 16-bit scenes, trains a small PSPNet for a few minutes, predicts a
    larger scene with a nodata collar, and writes a class COG with its QGIS style, a styled
    GeoPackage of polygons, an evaluation report and a preview PNG.
    """
    from geopsp.demo import run_demo

    def step(msg: str) -> None:
        click.echo(f"[geopsp demo] {msg} ...", err=True)

    result = run_demo(
        out_dir, train_minutes=train_minutes, predict_size=predict_size, seed=seed, overwrite=overwrite, step=step
    )
    s = result.scores
    if as_json:
        from dataclasses import fields

        payload: dict[str, object] = {
            f.name: str(getattr(result, f.name)) for f in fields(result) if f.name not in ("scores", "seconds")
        }
        payload.update({"scores": s, "seconds": result.seconds})
        json.dump(payload, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    lines = [
        "",
        f"geopsp demo finished in {result.seconds['total'] / 60:.1f} min. Outputs in {result.out_dir}/:",
        f"  model bundle      {result.bundle}",
        f"  ONNX model        {result.onnx_model}   (STAC MLM item: {result.onnx_model.with_suffix('.json').name})",
        f"  training curves   {result.train_curves}",
        f"  class map (COG)   {result.class_raster}",
        f"  QGIS style        {result.qml}",
        f"  QA layers         {', '.join(p.name for p in result.qa.values())}   (docs/howto/quality.md)",
        f"  polygons (GPKG)   {result.polygons}   (styled: drag it into QGIS)",
        f"  preview           {result.preview}",
        f"  evaluation        {result.report}",
        "",
        f"Scores on the predicted scene (against its labels): overall accuracy {s['overall_accuracy']:.3f}, "
        f"mIoU {s['miou']:.3f}, mean F1 {s['mean_f1']:.3f}, kappa {s['kappa']:.3f}",
    ]
    click.echo("\n".join(lines))
