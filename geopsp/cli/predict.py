"""``geopsp predict SCENE... --model BUNDLE|MODEL.onnx --out DIR``."""

from __future__ import annotations

import sys

import click

from geopsp.cli.options import (
    config_options,
    device_option,
    grid_options,
    grid_overrides,
    input_scale_option,
    load_cli_config,
    overwrite_option,
    qa_options,
    qa_overrides,
    runtime_option,
)
from geopsp.cli.progress import Reporter, progress_option

__all__ = ["predict"]


@click.command("predict")
@click.argument("scenes", nargs=-1, required=True, type=click.Path())
@click.option(
    "-m",
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help="Model bundle (.safetensors) or an exported ONNX model (.onnx, runs without torch).",
)
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(),
    help="Output directory (or, for one scene, the class raster's path ending in .tif); "
    "s3://bucket/prefix/ uploads each scene's outputs once complete.",
)
@click.option("--tile", "tile", type=int, default=None, help="Tile edge in pixels [default: the bundle's].")
@click.option("--overlap", type=int, default=None, help="Overlap between tiles in pixels [default: the bundle's].")
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Tiles per forward pass [default: 4 on the CPU; on CUDA what half the free GPU memory holds, up to 64].",
)
@device_option
@runtime_option
@click.option("--amp/--no-amp", default=None, help="bf16 autocast [default: on for CUDA and CPUs with native bf16].")
@click.option("--tta", type=click.Choice(["none", "flip", "d4"]), default=None, help="Test-time augmentation.")
@click.option(
    "--blend", type=click.Choice(["cosine", "uniform", "gaussian"]), default=None, help="Tile blending kernel."
)
@click.option("--probabilities/--no-probabilities", default=None, help="Also write the winning class probability.")
@qa_options
@click.option(
    "--vector/--no-vector", default=None, help="Also vectorize the classes to polygons (with the vectorize.* settings)."
)
@click.option("--preview/--no-preview", default=None, help="Also write a preview PNG.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model.")
@input_scale_option
@grid_options
@click.option("--rows", type=(int, int), default=None, metavar="START STOP", help="Compute only rows [START, STOP).")
@overwrite_option
@config_options
@progress_option("predict")
@click.pass_context
def predict(
    ctx: click.Context,
    scenes: tuple[str, ...],
    model_path: str,
    out: str,
    tile: int | None,
    overlap: int | None,
    batch_size: int | None,
    device: str | None,
    runtime: str | None,
    amp: bool | None,
    tta: str | None,
    blend: str | None,
    probabilities: bool | None,
    qa_all: bool,
    qa_layers: tuple[str, ...],
    vector: bool | None,
    preview: bool | None,
    compile_: bool | None,
    input_scale: tuple[float, float, float, float] | None,
    resolution: str | None,
    crs: str | None,
    aoi: str | None,
    rows: tuple[int, int] | None,
    overwrite: bool,
    config_path: str | None,
    set_items: tuple[str, ...],
    report: Reporter,
) -> None:
    """Segment SCENE(s) into georeferenced class rasters.

    Per scene, OUT gets <stem>_classes.tif (a styled COG) with its .qml and .aux.xml,
    <stem>_class_areas.csv (pixels, m² and share of each class), <stem>_summary.json and, if
    asked, the QA layers <stem>_<layer>.tif with their .qml (--qa, --probabilities), the
    polygons (with their .qml) and <stem>_preview.png. Stdout lists every file written (or
    s3:// object), one per line, class raster first and summary last, as the run committed
    them; progress, messages and the class areas table (unless -q) go to stderr (--progress
    json: one JSON object per line).
    """
    from geopsp.errors import ConfigError, GeopspError

    conf = load_cli_config(
        config_path,
        set_items,
        **{
            "predict.tile_size": tile,
            "predict.overlap": overlap,
            "predict.batch_size": batch_size,
            "predict.device": device,
            "predict.runtime": runtime,
            "predict.amp": amp,
            "predict.tta": tta,
            "predict.blend": blend,
            "predict.probabilities": probabilities,
            "predict.vector": vector,
            "predict.preview": preview,
            "predict.compile": compile_,
            "predict.input_scale": list(input_scale) if input_scale is not None else None,
            **grid_overrides(resolution, crs, aoi),
            **qa_overrides(qa_all, qa_layers),
        },
    )
    cfg = conf.predict
    if len(scenes) > 1 and out.lower().endswith((".tif", ".tiff")):
        raise ConfigError(f"--out {out} names one file but {len(scenes)} scenes were given; give a directory")

    from geopsp.inference.plan import check_inputs
    from geopsp.inference.runtime import is_onnx_model, model_meta

    # Cheap checks first (no torch): model metadata, scenes vs model, existing outputs.
    meta = model_meta(model_path)
    failed = 0

    def skip(exc: GeopspError, scene: object) -> None:
        """One scene: fail with its error. Several: report it, count it, go on with the rest."""
        nonlocal failed
        if len(scenes) == 1:
            raise exc
        failed += 1
        click.echo(f"Error: {exc}", err=True)
        report.failed(str(exc), scene=scene)

    from geopsp.io.source import SceneSource, resolve_scene

    todo: list[SceneSource] = []
    for scene in scenes:
        try:
            source = resolve_scene(scene, bands=meta.named_bands)  # a STAC item is fetched once, here
            check_inputs(
                source, meta, out, config=cfg, overwrite=overwrite, row_range=rows, vector_config=conf.vectorize
            )
        except GeopspError as exc:
            skip(exc, scene)
            continue
        todo.append(source)
    if not todo:
        sys.exit(1)

    from geopsp.pipeline import segment_raster

    model: object = model_path
    if not is_onnx_model(model_path):
        from geopsp.model.bundle import load_bundle

        model = load_bundle(model_path, device="cpu")  # once for all scenes
    obj = ctx.find_root().obj
    verbosity = int(obj.get("verbosity", 0)) if isinstance(obj, dict) else 0
    for index, source in enumerate(todo, start=1):
        report.start(source, index=index, count=len(todo))
        with report.bar(source.name, unit="tiles", enabled=verbosity >= 0) as progress:
            try:
                result = segment_raster(
                    source,
                    model,
                    out,
                    config=cfg,
                    overwrite=overwrite,
                    progress=progress,
                    row_range=rows,
                    vector_config=conf.vectorize,
                )
            except GeopspError as exc:
                skip(exc, source)
                continue
        report.device(result.summary["device"])
        report.outputs(result.uris or result.outputs)
        for location in result.locations:
            click.echo(location)
        if verbosity >= 0 and result.class_areas is not None:
            from geopsp.cli.areas import print_class_areas

            where = result.uris.get("class_areas") or str(result.outputs["class_areas"])
            print_class_areas(result.class_areas, title=source.name, csv=where)
    if failed:
        click.echo(f"Error: {failed} of {len(scenes)} scenes failed", err=True)
        report.failed(f"{failed} of {len(scenes)} scenes failed")
        sys.exit(1)
