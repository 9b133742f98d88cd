"""``geopsp model create|info|fetch-weights``: write untrained bundles, inspect bundles, download encoder weights."""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

import click

from geopsp.cli.options import overwrite_option

__all__ = ["model"]

_DTYPES = ("uint8", "uint16", "int16", "float32")


@click.group()
def model() -> None:
    """Create and inspect model bundles (one .safetensors file: weights + metadata); fetch encoder weights."""


@model.command("create")
@click.option("--preset", type=click.Choice(["fast", "paper"]), default="fast", show_default=True, help="Model preset.")
@click.option("--encoder", default=None, metavar="NAME", help="smp encoder name (default: the preset's).")
@click.option("--bands", type=click.IntRange(min=1), required=True, help="Number of input bands.")
@click.option(
    "--classes", "classes_arg", required=True, metavar="N|FILE", help="Number of classes, or a class table YAML/JSON."
)
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Bundle to write (.safetensors).")
@click.option("--dtype", type=click.Choice(_DTYPES), default="uint8", show_default=True, help="Input raster dtype.")
@click.option("--band-names", default=None, metavar="A,B,C", help="Comma-separated band names (default: band_1 ...).")
@click.option("--tile", type=click.IntRange(min=32), default=512, show_default=True, help="Default tile edge in px.")
@click.option(
    "--overlap", type=click.IntRange(min=0), default=64, show_default=True, help="Default tile overlap in px."
)
@click.option(
    "--output-stride", type=click.Choice(["8", "16", "32"]), default=None, help="Override the preset's stride."
)
@click.option(
    "--encoder-weights",
    type=click.Choice(["none", "imagenet"]),
    default="none",
    show_default=True,
    help="Encoder init; imagenet weights must be cached locally (nothing is downloaded).",
)
@click.option(
    "--pixel-size",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Pixel size (m) the model is meant for (--resolution model reads scenes at it).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random initialization.")
@overwrite_option
def create(
    preset: str,
    encoder: str | None,
    bands: int,
    classes_arg: str,
    out: str,
    dtype: str,
    band_names: str | None,
    tile: int,
    overlap: int,
    output_stride: str | None,
    encoder_weights: str,
    pixel_size: float | None,
    seed: int,
    overwrite: bool,
) -> None:
    """Write an untrained bundle (for smoke runs and benchmarks) and print its path."""
    from datetime import UTC, datetime

    import torch

    from geopsp import __version__
    from geopsp.classes import ClassTable
    from geopsp.io.atomic import check_output_path
    from geopsp.model.bundle import save_bundle
    from geopsp.model.meta import BundleMeta, Normalization
    from geopsp.model.registry import build_model, spec_from_preset

    names = _band_names(band_names, bands)
    if overlap * 2 >= tile:
        raise click.BadParameter(f"{overlap} must be less than half of --tile {tile}", param_hint="--overlap")
    table = _class_table(classes_arg, ClassTable)
    check_output_path(out, overwrite=overwrite)  # fail before building the model
    overrides: dict[str, Any] = {"encoder_weights": None if encoder_weights == "none" else encoder_weights}
    if output_stride is not None:
        overrides["output_stride"] = int(output_stride)
    spec = spec_from_preset(preset, encoder=encoder, in_channels=bands, num_classes=len(table), **overrides)
    nodata = 255 if 255 not in table.ids else 65535
    meta = BundleMeta(
        spec=spec,
        classes=table,
        bands=tuple(range(1, bands + 1)),
        band_names=names,
        input_dtype=dtype,
        normalization=Normalization.for_dtype(dtype, bands),
        tile_size=tile,
        overlap=overlap,
        nodata=nodata,
        pixel_size=pixel_size,
        provenance={
            "trained": False,
            "preset": preset,
            "seed": seed,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "geopsp_version": __version__,
        },
    )
    torch.manual_seed(seed)
    net = build_model(spec)
    path = save_bundle(net, meta, out, overwrite=overwrite)
    click.echo(str(path))


@model.command("info")
@click.argument("bundle", type=click.Path())  # the library names a directory in one line
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(bundle: str, as_json: bool) -> None:
    """Print a bundle's (or an exported .onnx model's) metadata; a bundle's weights are not loaded."""
    from geopsp.inference.runtime import is_onnx_model
    from geopsp.model.bundle import inspect_bundle

    if is_onnx_model(bundle):
        summary = _onnx_summary(bundle)
    else:
        summary = inspect_bundle(bundle)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(_format_info(summary))


@model.command("fetch-weights")
@click.argument("encoder", metavar="ENCODER")
@click.option(
    "--source",
    type=click.Choice(["torchvision", "timm"]),
    default="torchvision",
    show_default=True,
    help="Whose ImageNet weights: torchvision's IMAGENET1K_V1 (.pth) or timm's default tag (.safetensors).",
)
@click.option(
    "--base-url",
    envvar="GEOPSP_WEIGHTS_URL",
    default=None,
    metavar="URL",
    help="Download from this server (a mirror) instead of the source's.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the connection and for each read.",
)
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
@overwrite_option
@click.pass_context
def fetch_weights(
    ctx: click.Context,
    encoder: str,
    source: Literal["torchvision", "timm"],
    base_url: str | None,
    timeout_s: float,
    no_progress: bool,
    overwrite: bool,
) -> None:
    """Download ENCODER's ImageNet weights into the torch hub cache and print the file's path.

    ENCODER is resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d or
    resnext101_32x8d. Pass the printed path to `geopsp train --encoder-weights` (or set
    train.model.encoder_weights). A file already in the cache is not downloaded again unless
    --overwrite. Offline it fails within --timeout, naming the URL to download elsewhere.
    """
    from geopsp.cli.progress import ProgressBar
    from geopsp.model.download import fetch_weights as fetch

    obj = ctx.find_root().obj
    verbosity = int(obj.get("verbosity", 0)) if isinstance(obj, dict) else 0
    show = not no_progress and verbosity >= 0 and sys.stderr.isatty()
    with ProgressBar(f"{encoder} ({source})", unit="bytes", enabled=show) as progress:
        path = fetch(
            encoder,
            source=source,
            base_url=base_url,
            timeout_s=timeout_s,
            overwrite=overwrite,
            progress=progress,
        )
    click.echo(str(path))


def _onnx_summary(path: str) -> dict[str, Any]:
    """Return what ``model info`` shows of an ONNX export: the bundle's fields and the graph's contract."""
    from pathlib import Path

    from geopsp.inference.runtime import load_onnx

    model = load_onnx(path)
    i = model.info
    return {
        "path": str(model.path),
        "size_bytes": Path(path).stat().st_size,
        "format_version": model.meta.format_version,
        "geopsp_version": i.geopsp_version,
        "tensors": None,
        "parameters": None,
        "meta": model.meta.to_dict(),
        "onnx": i.to_dict(),
    }


def _band_names(arg: str | None, bands: int) -> tuple[str, ...]:
    if arg is None:
        return tuple(f"band_{i}" for i in range(1, bands + 1))
    names = tuple(n.strip() for n in arg.split(","))
    if len(names) != bands or any(not n for n in names):
        raise click.BadParameter(f"got {len(names)} names for {bands} bands: {arg!r}", param_hint="--band-names")
    return names


def _class_table(arg: str, table_cls: Any) -> Any:
    try:
        n = int(arg)
    except ValueError:
        return table_cls.from_file(arg)
    if n < 1:
        raise click.BadParameter(f"need at least 1 class, got {n}", param_hint="--classes")
    return table_cls.default(n)


def _format_info(s: dict[str, Any]) -> str:
    m = s["meta"]
    spec = m["spec"]
    norm = m["normalization"]
    onnx = s.get("onnx")
    params = f", {s['parameters'] / 1e6:.2f} M parameters" if s["parameters"] is not None else ""
    lines = [
        f"{'model:' if onnx else 'bundle:':<15}{s['path']} ({s['size_bytes'] / 1e6:.1f} MB)",
        f"format:        {'geopsp-onnx' if onnx else 'geopsp-bundle'} v{s['format_version']} "
        f"(written by geopsp {s['geopsp_version'] or '?'})",
        f"architecture:  {spec['arch']}, encoder {spec['encoder']} (depth {spec['encoder_depth']}, "
        f"output stride {spec['output_stride']}, aux {'on' if spec['aux'] else 'off'}){params}",
        f"pyramid:       bins {tuple(spec['ppm_bins'])}, {spec['decoder_channels']} channels, "
        f"dropout {spec['dropout']}",
        f"input:         {len(m['bands'])} bands {m['bands']} ({', '.join(m['band_names'])}), dtype {m['input_dtype']}",
        f"normalization: {norm['method']}, offset {_short(norm['offset'])}, scale {_short(norm['scale'])}"
        + (f", clip {norm['clip']}" if norm["clip"] is not None else ""),
        f"pixel size:    {m['pixel_size'] if m['pixel_size'] is not None else 'unknown'}",
        f"tiles:         {m['tile_size']} px, overlap {m['overlap']} px",
        f"nodata:        {m['nodata']} (ignore index {m['ignore_index']})",
        f"classes:       {len(m['classes'])}",
    ]
    if onnx:
        check = onnx.get("check") or {}
        q = onnx.get("quantization") or {}
        lines[5:5] = [
            f"graph:         {onnx['precision']}, {onnx['tile_size']} px tiles (fixed), margin {onnx['margin_px']} px, "
            f"opset {onnx['opset']}; from bundle sha256 {str(onnx['bundle_sha256'])[:12]}",
            f"export check:  classes agree with torch on {check.get('agreement', float('nan')):.5%} of "
            f"{check.get('pixels', 0)} pixels"
            + (f"; int8 agreement {q['agreement']:.4%}" if q.get("agreement") else ""),
            f"deepness:      {onnx.get('deepness') or '?'}",
        ]
    for c in m["classes"]:
        r, g, b = c["color"]
        lines.append(f"  {c['id']:>5}  {c['name']:<24} #{r:02x}{g:02x}{b:02x}")
    if m["provenance"]:
        lines.append("provenance:")
        for k, v in m["provenance"].items():
            lines.append(f"  {k}: {json.dumps(v) if not isinstance(v, str) else v}")
    return "\n".join(lines)


def _short(values: list[float], limit: int = 6) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _register() -> None:
    from geopsp.cli.export import export
    from geopsp.cli.quantize import quantize

    model.add_command(export)
    model.add_command(quantize)


_register()
