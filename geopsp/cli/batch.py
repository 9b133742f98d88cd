"""``geopsp batch``: segment many scenes on a dask cluster (local by default)."""

from __future__ import annotations

import sys
from pathlib import Path

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

__all__ = ["batch"]


def _parse_resources(items: tuple[str, ...], gpu: bool) -> dict[str, float] | None:
    if not items and not gpu:
        return None
    out: dict[str, float] = {}
    for item in items:
        for part in item.replace(",", " ").split():
            name, sep, value = part.partition("=")
            try:
                if not sep or not name:
                    raise ValueError
                out[name] = float(value)
            except ValueError:
                raise click.BadParameter(
                    f"expected NAME=AMOUNT like GPU=1, got {part!r}", param_hint="--resources"
                ) from None
    if gpu:
        out.setdefault("GPU", 1.0)
    return out


def _parse_gpus(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | int | None:
    """``--gpus all`` or a positive count (a usage error otherwise)."""
    if value is None or value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(f"expected 'all' or a number of GPUs (at least 1), got {value!r}")
    return n


@click.command(context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Model bundle (.safetensors) or exported ONNX model (.onnx: workers need no torch).",
)
@runtime_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder (mirrors input names), or s3://bucket/prefix/ (each worker uploads its scenes' outputs).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Existing dask scheduler, e.g. tcp://host:8786 (default: $GEOPSP_SCHEDULER, else a LocalCluster).",
)
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None, help="LocalCluster worker processes.")
@click.option(
    "--resources",
    "resource_items",
    multiple=True,
    metavar="NAME=N",
    help="dask resources each scene asks for, e.g. GPU=1 (workers declare them: dask worker --resources GPU=1).",
)
@click.option(
    "--gpu", is_flag=True, help="Shorthand for --resources GPU=1 and predict.device=cuda (GPU workers of a cluster)."
)
@click.option(
    "--gpus",
    default=None,
    metavar="all|N",
    callback=_parse_gpus,
    help="Start one local worker per GPU (all, or the first N; CUDA_VISIBLE_DEVICES is honoured), each pinned to "
    "its GPU, plus --workers CPU workers (default 1) that stitch and vectorize [default: batch.gpus].",
)
@device_option
@click.option(
    "--tls-ca-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="CA certificate (PEM) of a TLS cluster (tls:// scheduler; batch.tls.ca_file).",
)
@click.option(
    "--tls-cert",
    default=None,
    type=click.Path(dir_okay=False),
    help="This client's certificate (PEM), signed by that CA (batch.tls.cert).",
)
@click.option(
    "--tls-key",
    default=None,
    type=click.Path(dir_okay=False),
    help="The certificate's private key (PEM; batch.tls.key).",
)
@click.option("--vector", is_flag=True, default=None, help="Also vectorize each class raster (a separate CPU task).")
@click.option("--probabilities", is_flag=True, default=None, help="Also write the winning-class probability raster.")
@qa_options
@click.option(
    "--strip-pixels",
    type=click.IntRange(min=65_536),
    default=None,
    help="Split scenes larger than this into row strips run in parallel [default: batch.strip_pixels].",
)
@input_scale_option
@grid_options
@click.option("--retries", type=click.IntRange(min=0), default=None, help="Retries after transient errors.")
@config_options
@overwrite_option
@progress_option("batch")
@click.pass_context
def batch(
    ctx: click.Context,
    inputs: tuple[str, ...],
    model_path: str,
    runtime: str | None,
    out_dir: str,
    scheduler: str | None,
    n_workers: int | None,
    resource_items: tuple[str, ...],
    gpu: bool,
    gpus: str | int | None,
    device: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    vector: bool | None,
    probabilities: bool | None,
    qa_all: bool,
    qa_layers: tuple[str, ...],
    strip_pixels: int | None,
    input_scale: tuple[float, float, float, float] | None,
    resolution: str | None,
    crs: str | None,
    aoi: str | None,
    retries: int | None,
    config_path: str | None,
    set_items: tuple[str, ...],
    overwrite: bool,
    report: Reporter,
) -> None:
    """Segment many scenes: files, directories, glob patterns or list files (.txt/.csv).

    Directories are searched recursively (SpaceNet and DeepGlobe layouts recognised); outputs
    mirror the input names under --out, --out/manifest.jsonl records every scene and
    --out/class_areas.csv adds up the class areas of every finished scene (also printed,
    unless -q).
    Scenes already complete are skipped, so a rerun finishes only what is missing. --out
    s3://bucket/prefix/ uploads each scene's outputs once complete, its summary last. Exits 1
    when any scene failed.
    """
    resources = _parse_resources(resource_items, gpu)
    cfg = load_cli_config(
        config_path,
        set_items,
        **{
            "predict.vector": vector,
            "predict.probabilities": probabilities,
            "predict.runtime": runtime,
            "predict.device": device or ("cuda" if gpu else None),
            "predict.input_scale": list(input_scale) if input_scale is not None else None,
            **grid_overrides(resolution, crs, aoi),
            **qa_overrides(qa_all, qa_layers),
            "batch.strip_pixels": strip_pixels,
            "batch.retries": retries,
            "batch.gpus": gpus,
            "batch.tls.ca_file": tls_ca_file,
            "batch.tls.cert": tls_cert,
            "batch.tls.key": tls_key,
        },
    )
    from geopsp.batch.runner import run_batch

    report.start(" ".join(inputs))
    with report.bar("scenes", unit="scenes", enabled=_show_progress(ctx)) as progress:
        outcome = run_batch(
            list(inputs),
            model_path,
            out_dir,
            config=cfg,
            scheduler=scheduler,
            n_workers=n_workers,
            resources=resources,
            overwrite=overwrite,
            progress=progress,
        )
    for record in outcome.records:
        if record.status == "failed":
            report.failed(record.error or "failed", scene=record.scene)
        elif record.status == "done":
            report.outputs(
                {Path(rel).name: _joined(outcome.out_dir, rel) for rel in record.outputs}, scene=record.scene
            )
    report.outputs({"manifest": outcome.manifest})
    if outcome.class_areas is not None:
        report.outputs({"class_areas": outcome.class_areas.path})
        if _verbosity(ctx) >= 0:
            from geopsp.cli.areas import print_class_areas

            n = outcome.class_areas.table.scenes
            print_class_areas(
                outcome.class_areas.table, title=f"{n} scene{'s' if n != 1 else ''}", csv=outcome.class_areas.path
            )
    click.echo(outcome.summary_line(), err=True)
    if not outcome.ok:
        report.failed(outcome.summary_line())
        ctx.exit(1)


def _joined(out_dir: object, rel: str) -> str:
    """Return a record's output (relative to the batch's folder or ``s3://`` prefix) as a path or URI."""
    base = str(out_dir)
    return f"{base.rstrip('/')}/{rel}" if base.startswith("s3://") else str(Path(base) / rel)


def _verbosity(ctx: click.Context) -> int:
    obj = ctx.find_root().obj
    return int(obj.get("verbosity", 0)) if isinstance(obj, dict) else 0


def _show_progress(ctx: click.Context) -> bool:
    """Draw the bar unless -q was given or stderr is not a terminal."""
    return _verbosity(ctx) >= 0 and sys.stderr.isatty()
