# ruff: noqa: RUF001
"""The performance report: run the benchmarks, then write docs/performance.md and its plots.

Usage::

    .venv/bin/python bench/report.py             # run bench/predict_matrix.py, then write the report
    .venv/bin/python bench/report.py --no-run    # only rebuild the page from bench/results/*.json
    .venv/bin/python bench/report.py --run predict_matrix vectorize   # also rerun bench/vectorize.py

The page shows the numbers of ``bench/results/predict_matrix.json`` (the predict sweep, memory
against scene size, the naive whole-scene comparison), ``bench/results/vectorize.json`` (from
``bench/vectorize.py``), ``bench/results/predict.json`` (from ``bench/predict.py``) and
``bench/results/seams.json`` (grid dependence, from ``bench/seams.py``) when present, with the
machine they were measured on. Plots go to ``docs/img/perf_*.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from report_cog import section_cog_finish
from report_qa import section_qa
from report_runtime import section_quantize, section_remote, section_runtime
from report_training import section_lodo, section_training

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
IMG = ROOT / "docs" / "img"
PAGE = ROOT / "docs" / "performance.md"
GIB = 1 << 30
BUDGET_GIB = 24

SCRIPTS = {
    "predict_matrix": "predict_matrix.py",
    "vectorize": "vectorize.py",
    "predict": "predict.py",
    "seams": "seams.py",
    "train_speed": "train_speed.py",
    "lodo": "lodo.py",
    "runtime": "runtime.py",
    "quantize": "quantize.py",
    "host_stages": "host_stages.py",
    "cog_finish": "cog_finish.py",
    "qa_memory": "qa_memory.py",
}


def load(name: str) -> dict[str, Any] | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "on" if x else "off"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


# ---------------------------------------------------------------------------------------------
# plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    presets = sorted({r["preset"] for r in rows}, key=lambda p: p != "fast")
    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4), squeeze=False)
    stages = ("read", "preprocess", "model", "blend", "write")
    colors = ("#4c72b0", "#8172b2", "#dd8452", "#55a868", "#c44e52")
    for ax, preset in zip(axes[0], presets, strict=True):
        sub = [r for r in rows if r["preset"] == preset]
        names = [r["variant"] for r in sub]
        left = [0.0] * len(sub)
        for st, c in zip(stages, colors, strict=True):
            vals = [r["seconds"][st] for r in sub]
            ax.barh(names, vals, left=left, color=c, label=st)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        for i, r in enumerate(sub):
            ax.text(left[i], i, f"  {r['end_to_end_mp_s']:.3g} MP/s", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (stage time; stages overlap, so they can exceed the wall time)")
        ax.set_title(f"{preset} preset, {sub[0]['scene']} scene")
        ax.set_xlim(0, max(left) * 1.35)
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_memory(mem: list[dict[str, Any]], naive: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ok = [m for m in mem if "error" not in m]
    if ok:
        ax.plot(
            [m["megapixels"] for m in ok],
            [m["peak_rss_mib"] for m in ok],
            "o-",
            label="geopsp predict (stand-in model)",
        )
        ax.axhline(ok[0]["baseline_rss_mib"], color="grey", ls=":", label="interpreter + torch + GDAL, no scene")
    for mode, style in (("tiled", "s-"), ("naive", "x--")):
        pts = [n for n in naive if n["mode"] == mode and "error" not in n]
        if pts:
            ax.plot(
                [n["megapixels"] for n in pts], [n["peak_rss_mib"] for n in pts], style, label=f"{mode}, fast preset"
            )
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("scene size (megapixels, square scenes; log scale)")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title("Peak memory against scene size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# sections


def section_machine(pm: dict[str, Any] | None) -> str:
    if pm is None:
        return "No results yet: run `make bench`.\n\n"
    m = pm["machine"]
    loads = [r["load_avg_1min_before"] for r in pm.get("sweep") or [] if "load_avg_1min_before" in r]
    load_s = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "unknown"
    cores = m["cores"]
    if loads and max(loads) > cores + 0.5:
        load_text = (
            "**The machine was shared**: other jobs were using the same cores while these ran "
            f"(the 1-minute load average before the sweep's runs was {load_s} on {cores} cores), so absolute "
            "timings are pessimistic and noisy; ratios measured back to back are more reliable than single numbers. "
        )
    else:
        load_text = (
            f"The 1-minute load average before the sweep's runs was {load_s} on {cores} cores (the benchmarks "
            "themselves use all of them); timings are still noisy, so compare ratios measured back to back. "
        )
    return (
        f"Measured on **{m['cpu']}, {cores} cores** (torch {m['torch']}, {m['torch_threads']} threads, "
        f"Python {m['python']}, no GPU), {pm['created']}. "
        + load_text
        + "Models are untrained bundles from `geopsp model create` (speed does not depend on the weights), "
        "3-band uint8 synthetic scenes from `geopsp sample-scene`, 6 classes.\n\n"
    )


def section_sweep(pm: dict[str, Any]) -> str:
    rows = pm.get("sweep") or []
    if not rows:
        return "No sweep results.\n\n"
    plot_sweep(rows, IMG / "perf_predict_sweep.png")
    sizes = pm.get("scene_sizes", {}).get("sweep", {})
    out = [
        "One setting changes at a time from the base (tile 512, overlap 64, fp32, channels_last on, batch 4, "
        "cosine blending, CPU). Scenes: "
        + ", ".join(f"`{k}` preset on {v}×{v} px" for k, v in sizes.items())
        + ". *End-to-end* is scene megapixels per second of the whole `segment_raster` call (read, "
        "preprocess, model, blend, write the COG with overviews); overlapping tiles compute some pixels more "
        "than once, so the model runs on more pixels than the scene has. *model-only* is the forward pass + "
        "softmax alone on one random batch of the same size, timed after a warm-up; the *ratio* is the "
        "end-to-end speed over the tile pixels actually run (tiles × tile² / wall) divided by the model-only "
        "speed: how much of the model's speed survives the pipeline. Stage shares are each stage's busy time "
        "over the wall time; the reader runs in parallel threads, so shares need not add up to 1. The "
        "model-only figure comes from one short measurement and swings with the load of the moment; "
        "`bench/predict.py` measures the ratio more carefully (the same tiles, the same batches, alternating "
        "runs, medians).\n\n",
        "| preset | variant | tile | overlap | batch | precision | channels_last | tiles | wall s | CPU s "
        "| end-to-end MP/s | model-only MP/s | ratio | read | model | blend | write |\n",
        "|---|---|--:|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    ]
    for r in rows:
        sh = r.get("stage_share", {})
        out.append(
            f"| {r['preset']} | {r['variant']} | {r['tile_size']} | {r['overlap']} | {fmt(r.get('batch_size'))} "
            f"| {'bf16' if r['amp'] else 'fp32'} "
            f"| {fmt(r['channels_last'])} | {r['tiles_run']} | {fmt(r['wall_s'], 1)} | {fmt(r.get('cpu_s'), 1)} "
            f"| **{fmt(r['end_to_end_mp_s'], 3)}** "
            f"| {fmt(r['model_only_mp_s'], 3)} | {fmt(r['ratio_end_to_end_to_model'])} | "
            + " | ".join(f"{100 * sh.get(k, 0):.0f} %" for k in ("read", "model", "blend", "write"))
            + " |\n"
        )
    out.append("\n![Stage times per variant](img/perf_predict_sweep.png)\n\n")
    by = {(r["preset"], r["variant"]): r for r in rows}
    notes = []
    for preset in ("fast", "paper"):
        b, h = by.get((preset, "base")), by.get((preset, "bf16"))
        if b and h:
            notes.append(
                f"{preset}: bf16 autocast runs at {h['end_to_end_mp_s'] / b['end_to_end_mp_s']:.2f}× "
                "the fp32 speed end to end"
            )
        c = by.get((preset, "channels_last off"))
        if b and c:
            notes.append(
                f"{preset}: channels_last off runs at {c['end_to_end_mp_s'] / b['end_to_end_mp_s']:.2f}× the default"
            )
        q = by.get((preset, "batch 1"))
        if b and q:
            notes.append(
                f"{preset}: one tile a pass runs at {q['end_to_end_mp_s'] / b['end_to_end_mp_s']:.2f}× the default "
                f"batch of {fmt(b.get('batch_size'))}"
            )
        if b:
            sh = b.get("stage_share", {})
            notes.append(
                f"{preset}: the model takes {100 * sh.get('model', 0):.0f} % of the wall time at the base setting"
            )
    if notes:
        out.append("Read off this run (single measurements):\n\n")
        out.extend(f"- {n};\n" for n in notes)
        out.append("\n")
    return "".join(out)


def section_memory(pm: dict[str, Any], pr: dict[str, Any] | None) -> str:
    mem = [m for m in pm.get("memory") or [] if "error" not in m]
    naive = pm.get("naive") or []
    if not mem:
        return "No memory results.\n\n"
    plot_memory(mem, naive, IMG / "perf_memory.png")
    out = [
        "Peak resident memory of one `segment_raster` call per fresh process (read from the child's own "
        "`VmHWM`), on square 3-band uint8 scenes from 1000² to 20000² px, 512 px tiles, overlap 64. A real "
        "CNN on 400 MP would take hours on two cores, so these runs use a stand-in model (a 1×1 convolution, "
        "6 classes); the reader, the strip mosaic and the COG writer are the real ones. The scenes are sparse "
        "GeoTIFFs (blocks never written read back as zeros), so creating them is instant.\n\n",
        "| scene | megapixels | peak RSS MiB | above baseline MiB | strip accumulator MiB | wall s |\n",
        "|---|--:|--:|--:|--:|--:|\n",
    ]
    for m in mem:
        out.append(
            f"| {m['size']}² | {m['megapixels']:.0f} | {m['peak_rss_mib']:.0f} "
            f"| {m['peak_rss_mib'] - m['baseline_rss_mib']:.0f} "
            f"| {m['strip_mib']:.0f} | {fmt(m['wall_s'], 1)} |\n"
        )
    lo, hi = mem[0], mem[-1]
    out.append(
        f"\nBaseline (Python + torch + rasterio imported, no scene): {lo['baseline_rss_mib']:.0f} MiB. "
        f"From {lo['megapixels']:.0f} MP to {hi['megapixels']:.0f} MP "
        f"({hi['megapixels'] / lo['megapixels']:.0f}× the pixels) "
        f"peak memory goes from {lo['peak_rss_mib']:.0f} to {hi['peak_rss_mib']:.0f} MiB "
        f"({hi['peak_rss_mib'] / lo['peak_rss_mib']:.2f}×). Memory does not follow the pixel count. Its buffers grow "
        "with the scene **width**, not its height: the strip accumulator holds `classes × overlap × width` "
        "float32 values plus a few tiles (the `strip accumulator` column), the tile reader about one tile's "
        "rows of the input (it reads blocks as the tiles reach them and forgets rows no later tile needs), and "
        "the writer one band of class rows; what remains is allocator retention, which `predict.bound_heap` "
        "(on by default) keeps small: glibc then maps and unmaps every large block, which costs page faults "
        "(the `fast` preset ran about 25 % slower on these 2 cores: 20000 × 2560 px in 27.5 s at 1115 MB peak, "
        "21.1 s at 1275 MB with `--set predict.bound_heap=false`).\n\n"
        "![Peak memory against scene size](img/perf_memory.png)\n\n"
    )
    if pr and "memory" in pr:
        runs = pr["memory"].get("runs", {})
        if runs:
            out.append(
                "`bench/predict.py` measures the same thing independently (its own stand-in model and scenes "
                "written window by window): "
                + ", ".join(
                    f"{int(k)}² px: {v['peak_rss_mb']:.0f} MB"
                    for k, v in sorted(runs.items(), key=lambda kv: int(kv[0]))
                )
                + " (`bench/results/predict.json`)."
            )
            ratio = pr["memory"].get("peak_ratio")
            if ratio is not None:
                met = "met" if pr["memory"].get("meets_target") else "**not met**"
                out.append(
                    f" That is {ratio:.2f}× from 2000² to 20000² px; the target (within 1.2×, under 2.5 GB) is {met}."
                )
            out.append("\n\n")
    return "".join(out)


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line y = a + b x."""
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0
    return my - b * mx, b


def section_naive(pm: dict[str, Any]) -> str:
    rows = pm.get("naive") or []
    if not rows:
        return "No naive-comparison results.\n\n"
    out = [
        "The approach of simple examples: read the whole scene, normalize it, run it through the model in one "
        "forward pass, argmax, write. Against `geopsp predict` (tiles of 512 px, overlap 64, blended, "
        "streamed), `fast` preset, each measurement in a fresh process (peak RSS from the child's `VmHWM`).\n\n",
        "| scene | approach | wall s | peak RSS MiB |\n|---|---|--:|--:|\n",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['size']}² | {r['mode']} | failed: {r['error']} | |\n")
        else:
            out.append(f"| {r['size']}² | {r['mode']} | {fmt(r['wall_s'], 1)} | {r['peak_rss_mib']:.0f} |\n")
    budget = BUDGET_GIB * 1024
    lines = []
    for mode in ("naive", "tiled"):
        pts = [(r["size"], r["peak_rss_mib"]) for r in rows if r["mode"] == mode and "error" not in r]
        if len(pts) < 2:
            continue
        if mode == "naive":
            # memory grows with the pixel count: fit peak = a + b * pixels
            a, b = _fit([(s * s, m) for s, m in pts])
            side = math.sqrt(max(budget - a, 0) / b) if b > 0 else float("inf")
            lines.append(
                f"- **naive**: about {b * 1e6:.0f} MiB per megapixel above {a:.0f} MiB, so the largest square scene "
                f"that fits in {BUDGET_GIB} GiB is about **{side:,.0f}² px** ({side * side / 1e6:,.0f} MP)"
            )
        else:
            # memory grows with the width only: fit peak = a + b * width
            a, b = _fit([(float(s), m) for s, m in pts])
            width = (budget - a) / b if b > 0 else float("inf")
            lines.append(
                f"- **tiled**: about {b * 1000:.0f} MiB per 1000 px of scene width above {a:.0f} MiB and nothing per "
                f"row, so {BUDGET_GIB} GiB allows scenes about **{width:,.0f} px wide**, of any height "
                "(wider scenes can be cut into column-wise pieces or strips by the caller)"
            )
    if lines:
        out.append(
            f"\nLargest scene in {BUDGET_GIB} GiB, **extrapolated** linearly from the two measured sizes "
            "(not measured):\n\n" + ";\n".join(lines) + ".\n\n"
        )
    return "".join(out)


def section_vectorize(vz: dict[str, Any] | None) -> str:
    if vz is None:
        return "No results yet: run `.venv/bin/python bench/vectorize.py`.\n\n"
    r = vz.get("raster", {})
    out = [
        f"`bench/vectorize.py`: `geopsp.vectorize` end to end (class raster → GeoPackage with attributes and QGIS "
        f"style) on a synthetic {r.get('width')}×{r.get('height')} land-cover map ({r.get('megapixels', 0):.0f} MP, "
        f"{r.get('classes')} classes), each variant in a fresh process.\n\n",
        "| variant | wall s | CPU s | MP/s | MP per CPU-s | polygons | polygons/s | peak RSS MiB (main + workers) |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|\n",
    ]
    for row in vz.get("results", []):
        if "error" in row:
            out.append(f"| {row.get('name')} | failed: {row['error']} | | | | | | |\n")
            continue
        secs = row.get("seconds")
        polys = row.get("polygons")
        pps = polys / secs if polys and secs else None
        peak = row.get("peak_rss_mib")
        workers = row.get("peak_worker_rss_mib") or 0
        out.append(
            f"| {row.get('name')} | {fmt(secs, 1)} | {fmt(row.get('cpu_seconds'), 1)} "
            f"| {fmt(row.get('megapixels_per_s'), 2)} | {fmt(row.get('megapixels_per_cpu_s'), 1)} | {fmt(polys)} "
            f"| {fmt(pps, 0)} | {fmt(peak, 0)}" + (f" + {workers:.0f}" if workers else "") + " |\n"
        )
    out.append(
        "\n*CPU s* counts the process and its workers; on a loaded machine *MP per CPU-s* is the steadier "
        "measure of the work done.\n"
    )
    by = {row.get("name", ""): row for row in vz.get("results", []) if "error" not in row}
    blocks = next((r for n, r in by.items() if n.startswith("blocks of 1024 rows, 1 process")), None)
    whole = next((r for n, r in by.items() if n.startswith("whole raster")), None)
    naive = next((r for n, r in by.items() if n.startswith("naive")), None)
    if blocks and whole:
        out.append(
            f"Blocks of 1024 rows against the whole raster as one block: "
            f"{blocks['megapixels_per_cpu_s'] / whole['megapixels_per_cpu_s']:.2f}× the work per CPU-second with "
            f"{blocks['peak_rss_mib'] / whole['peak_rss_mib']:.2f}× the peak memory"
        )
        if naive:
            out.append(
                f"; against the naive baseline (whole band in memory, `rasterio.features.shapes`, one write): "
                f"{blocks['megapixels_per_cpu_s'] / naive['megapixels_per_cpu_s']:.2f}× the work per CPU-second, "
                f"{blocks['peak_rss_mib'] / naive['peak_rss_mib']:.2f}× the memory"
            )
        out.append(".\n")
    scaling = vz.get("memory_vs_height") or []
    if scaling:
        out.append("\nPeak memory against the raster height (width fixed):\n\n| height | peak RSS MiB |\n|--:|--:|\n")
        for s in scaling:
            out.append(f"| {s.get('height')} | {fmt(s.get('peak_rss_mib'), 0)} |\n")
    out.append("\n")
    return "".join(out)


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def section_seams(sm: dict[str, Any] | None) -> str:
    if sm is None:
        return "No results yet: run `.venv/bin/python bench/seams.py`.\n\n"
    rows = sm.get("variants") or []
    if not rows:
        return "No grid-dependence results.\n\n"
    m, sc, base = sm["model"], sm["scene"], rows[0]
    b = sm["border_px"]
    out = [
        f"`bench/seams.py`: how much the class map depends on where the tile grid falls. The demo scene "
        f"(`geopsp demo`, 2048² px with a nodata collar) is predicted with the demo's trained model "
        f"({m['arch']}/{m['encoder']}, {m.get('epochs')} epochs, validation mIoU {fmt(m.get('val_miou'))}) "
        f"twice: as it is (A) and cropped by {sc['shift_px']} px, half a stride, at the top and the left (B, a "
        f"GeoTIFF of its own with the shifted transform), so B's tile grid is moved by half a stride against "
        "the content. *Disagreement* is the share of the valid pixels of the common area whose class differs "
        f"between the two maps. *Border ratio* is the disagreement within {b} px of an interior tile edge of "
        "either grid (the first and one-past-last row or column of every `TileGrid` window inside the scene; "
        f"pixel `y` is within {b} px of the line `e` when `e − {b} ≤ y < e + {b}`) over the disagreement on the "
        "other pixels: 1 means the tile edges leave no trace. The *crop band* is the pixels within one tile of "
        "the top or left of the common area, where B's scene was cut and A's goes on: there B has lost the "
        "context the crop removed, which no tiling can give back, so the maps differ more there "
        "(it measures the crop, not the grid); the *interior* figures leave it out and are the ones the target "
        "(interior border ratio ≤ 1.05) is read on. ± is the binomial standard error of the ratio, a lower "
        "bound (disagreeing pixels cluster along class boundaries). *Accuracy* is map A against the scene's "
        "labels. *Work* is the pixels the model runs on for scene A (tiles × model input² × TTA passes) "
        "relative to the baseline: what the time would be on an idle machine. *Wall* and *CPU* are the "
        "fastest of the repeated predicts of A relative to the baseline's in the same run (the baseline runs "
        "first and again last; its second run shows the drift). " + _seams_load(sm) + "\n\n",
        "| variant | tile | overlap | blend | floor | TTA | margin | tiles A+B | disagreement | border ratio "
        "| interior disagreement | interior border ratio | crop band | accuracy | work × | wall × | CPU × |\n",
        "|---|--:|--:|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    ]
    for r in rows:
        name = r["variant"] + (" **(defaults)**" if r.get("is_default") else "")
        se = r.get("border_ratio_interior_se")
        out.append(
            f"| {name} | {r['tile_size']} | {r['overlap']} | {r['blend']} | {r['blend_floor']:g} | {r['tta']} "
            f"| {r['margin_px']} "
            f"| {sum(r['tiles_run'])} | {_pct(r['disagreement'])} | {fmt(r['border_ratio'], 3)} "
            f"| {_pct(r['disagreement_interior'])} | **{fmt(r['border_ratio_interior'], 3)}**"
            + (f" ± {se:.3f}" if se is not None else "")
            + f" | {_pct(r['disagreement_crop_band'])} | {fmt(r['accuracy_a'], 4)} "
            f"| {fmt(r['work_ratio'])} | {fmt(r['time_ratio'])} | {fmt(r.get('cpu_ratio'))} |\n"
        )
    prof = base.get("profile_interior") or []
    if prof:
        out.append(
            "\nDisagreement of the baseline against the distance to the nearest tile edge of either grid "
            "(interior): "
            + ", ".join(
                f"{p['from_px']}–{p['to_px'] if p['to_px'] is not None else '∞'} px: {_pct(p['disagreement'])}"
                for p in prof
                if p["pixels"]
            )
            + ".\n"
        )
    for t in sm.get("timing") or []:
        out.append(
            f"\nCost of the defaults against the baseline, measured alternately ({t['pairs']} pairs, medians of the "
            f"per-pair ratios) on scene A with {t['tile_size']} px tiles, overlap {t['overlap']}: "
            f"**{t['median_wall_ratio']:.2f}×** the wall time, {t['median_cpu_ratio']:.2f}× the CPU time "
            f"(the model's work: {t['work_ratio']:.2f}×; load before: {t['load_avg_1min_before']:.1f}).\n"
        )
    notes = _seams_notes(rows, sm.get("timing") or [], target=1.05)
    if notes:
        out.append("\nRead off this run:\n\n" + "".join(f"- {n};\n" for n in notes))
    out.append("\n")
    return "".join(out)


def _seams_load(sm: dict[str, Any]) -> str:
    loads = [r["load_avg_1min_before"] for r in sm.get("variants") or [] if "load_avg_1min_before" in r]
    if not loads:
        return ""
    cores = sm["machine"]["cores"]
    shared = max(loads) > cores + 0.5
    after = sm.get("loadavg_after") or {}
    after = after if isinstance(after, dict) else {"variants": after}
    return (
        f"The 1-minute load average before the variants was {min(loads):.1f} to {max(loads):.1f} on {cores} cores"
        + (" (**shared**: other jobs ran meanwhile, so trust *work* over *wall* and *CPU*)" if shared else "")
        + "; `/proc/loadavg` after the run: "
        + ", ".join(f"`{v}` ({k})" for k, v in after.items())
        + "."
    )


def _seams_notes(rows: list[dict[str, Any]], timing: list[dict[str, Any]], *, target: float) -> list[str]:
    base = rows[0]
    by = {r["variant"]: r for r in rows}
    notes = []

    def cost(r: dict[str, Any]) -> str:
        return (
            f"{r['work_ratio']:.2f}× the work, {fmt(r['time_ratio'])}× the wall "
            f"and {fmt(r.get('cpu_ratio'))}× the CPU time"
        )

    dflt = next((r for r in rows if r.get("is_default")), None)
    if dflt is not None and dflt is not base:
        notes.append(
            f"the package defaults (`{dflt['variant']}`) against the baseline: interior border ratio "
            f"{base['border_ratio_interior']:.3f} → **{dflt['border_ratio_interior']:.3f}**, interior disagreement "
            f"{_pct(base['disagreement_interior'])} → {_pct(dflt['disagreement_interior'])} "
            f"({100 * (dflt['disagreement_interior'] / base['disagreement_interior'] - 1):+.0f} %), "
            f"whole common area {_pct(base['disagreement'])} → {_pct(dflt['disagreement'])}, for "
            + (
                " and ".join(f"{t['median_wall_ratio']:.2f}× the time at {t['tile_size']} px tiles" for t in timing)
                + " (alternating timing above)"
                if timing
                else cost(dflt)
            )
        )
    meets = [r for r in rows if (r.get("border_ratio_interior") or 99) <= target and r["variant"] != "base (again)"]
    if meets:
        cheap = min(meets, key=lambda r: r["work_ratio"])
        notes.append(
            f"{len(meets)} of {len(rows)} rows reach an interior border ratio ≤ {target}; the cheapest is "
            f"`{cheap['variant']}` ({cheap['border_ratio_interior']:.3f}, {cost(cheap)})"
        )
    else:
        notes.append(f"no variant reaches an interior border ratio ≤ {target}")
    low = min(rows, key=lambda r: r["disagreement_interior"])
    notes.append(
        f"the least grid-dependent map comes from `{low['variant']}` ({_pct(low['disagreement_interior'])} "
        f"interior disagreement, {100 * (low['disagreement_interior'] / base['disagreement_interior'] - 1):+.0f} %), "
        f"for {cost(low)}: more overlap is the only strong lever on the overall disagreement, and it is paid "
        "in tiles"
    )
    for name in ("tta flip", "tta d4"):
        r = by.get(name)
        if r:
            notes.append(
                f"`{name}`: interior disagreement "
                f"{100 * (r['disagreement_interior'] / base['disagreement_interior'] - 1):+.0f} %, border ratio "
                f"{r['border_ratio_interior']:.3f}, for {cost(r)}"
            )
    again = by.get("base (again)")
    if again:
        notes.append(
            f"the baseline run again at the end took {fmt(again['time_ratio'])}× its first wall time "
            f"and {fmt(again.get('cpu_ratio'))}× its CPU time: the timing noise of this run"
        )
    return notes


def section_other() -> str:
    rows = []
    for p in sorted(RESULTS.glob("*.json")):
        script = HERE / f"{p.stem}.py"
        rows.append(f"| `bench/results/{p.name}` | " + (f"`bench/{script.name}`" if script.exists() else "–") + " |\n")
    return "| results | produced by |\n|---|---|\n" + "".join(rows) + "\n"


def section_gpu(gc: dict[str, Any] | None, hs: dict[str, Any] | None, mg: dict[str, Any] | None) -> str:
    out = []
    cuda = gc is not None and str(gc.get("device", "")).startswith("cuda")
    if cuda:
        m = gc["machine"]
        out.append(
            f"Measured by `bench/gpu_check.py` on **{m['gpu']}** ({m['gpus']} GPU(s), host {m['cpu']}, "
            f"{m['cores']} cores, torch {m['torch']}).\n\n"
        )
        corr = gc.get("correctness")
        if corr:
            out.append("| check | agreement / identical | bar | passed |\n|---|---|---|---|\n")
            for c in corr["checks"]:
                what = fmt(c.get("agreement"), 6) if "agreement" in c else fmt(c.get("identical"))
                out.append(f"| {c['check']} | {what} | {fmt(c.get('bar'))} | {fmt(c['passed'])} |\n")
            out.append("\n")
        sp = gc.get("speed")
        if sp:
            size = sp["scene"]["size"]
            out.append(
                f"On a {size}² 3-band uint8 DEFLATE COG, 512 px tiles, overlap 64:\n\n"
                "| preset | batch | model only Mpx/s | end to end Mpx/s | loop Mpx/s | loop / model | peak GPU MB "
                "| GPU busy | host CPU ms/MP |\n|---|---|---|---|---|---|---|---|---|\n"
            )
            for preset in ("fast", "paper"):
                r = sp.get(preset)
                if r:
                    out.append(
                        f"| {preset} | {r['batch_size']} | {fmt(r['model_only_mpx_per_s'], 1)} | "
                        f"{fmt(r['end_to_end_mpx_per_s'], 1)} | {fmt(r['loop_mpx_per_s'], 1)} | "
                        f"{fmt(r['loop_vs_model_only'])} | {fmt(r['peak_gpu_mb'], 0)} | "
                        f"{fmt(r['gpu_busy_fraction'])} | {fmt(r['host_cpu_ms_per_mp'], 1)} |\n"
                    )
            out.append("\n")
    else:
        out.append(
            "No GPU was lent to the sessions that took these numbers, so the GPU path has been built and "
            "tested on the CPU only; its own numbers come from `bench/gpu_check.py` on a CUDA machine "
            "(see [Use a GPU](howto/gpu.md#the-device-check)). What can be measured without one is the host "
            "side a GPU needs, and the plan that spreads a big scene over several GPUs.\n\n"
        )
    if hs:
        m, best = hs["machine"], hs["best"]
        out.append(
            f"**Host side of a GPU run** (`bench/host_stages.py`, {m['cpu']}, {m['cores']} cores, load "
            f"{fmt(m['loadavg'][0], 1)}): decoding a {hs['scene']['size']}² 3-band DEFLATE COG and cutting its "
            f"tiles into batches of {hs['batch']} as the CUDA path does, with no model.\n\n"
            "| path | wall Mpx/s | CPU ms per scene MP |\n|---|---|---|\n"
        )
        names = {"batches": "cutters → reused batch buffers", "tiles": "one tile at a time, then a stack per batch"}
        for mode in ("batches", "tiles"):
            if mode in best:
                r = best[mode]
                out.append(f"| {names[mode]} | {fmt(r['mpx_per_s'], 1)} | {fmt(r['cpu_ms_per_mp'], 1)} |\n")
        if hs.get("before"):
            r = hs["before"]
            commit = hs.get("before_commit", "")
            out.append(
                f"| before: serial cutting, one tile at a time (`{commit}`) | {fmt(r['mpx_per_s'], 1)} | "
                f"{fmt(r['cpu_ms_per_mp'], 1)} |\n"
            )
        out.append("\n")
        ops = hs.get("blend_ops")
        if ops:
            out.append(
                f"Blending launches **{fmt(ops['cuda_reduction']['kernels_per_tile'], 1)} kernels a tile** on CUDA "
                f"(one argmax per chunk), {fmt(ops['cpu_reduction']['kernels_per_tile'], 1)} with the CPU's "
                f"per-class passes ({ops['classes']} classes, counted with a dispatch mode).\n\n"
            )
    if mg:
        out.append(
            f"**Several GPUs on one scene** (`bench/multi_gpu.py`, an estimate on paper): a {mg['scene']['height']}² "
            f"scene, {mg['scene']['tile']} px tiles, {mg['gpus']} GPUs, `batch.strip_pixels` "
            f"{mg['strip_pixels'] / 1e6:g} MP.\n\n"
        )
        for line in mg.get("lines", []):
            out.append(f"- {line}\n")
        out.append("\n")
    return "".join(out)


def write_page() -> Path:
    IMG.mkdir(parents=True, exist_ok=True)
    pm = load("predict_matrix")
    vz = load("vectorize")
    pr = load("predict")
    sm = load("seams")
    out = [
        "<!-- Generated by bench/report.py from bench/results/*.json; do not edit by hand. -->\n\n",
        "# Performance\n\n",
        "How fast geopsp segments and vectorizes on a small CPU, how its memory behaves as scenes grow, and how it "
        "compares with running the whole scene through the model at once. Reproduce everything with one command "
        "(about 15 minutes on 2 cores):\n\n",
        "```bash\nmake bench            # or: .venv/bin/python bench/report.py\n```\n\n",
        "It runs `bench/predict_matrix.py` (which writes `bench/results/predict_matrix.json`) and rebuilds this "
        "page and its plots from `bench/results/*.json`; `bench/report.py --no-run` only rebuilds the page.\n\n",
        "## Machine\n\n",
        section_machine(pm),
    ]
    none = "No results yet: run `make bench`.\n\n"
    out += ["## Predict throughput\n\n", section_sweep(pm) if pm else none]
    out += ["## Memory\n\n", section_memory(pm, pr) if pm else none]
    out += ["## Against the naive approach\n\n", section_naive(pm) if pm else none]
    out += ["## Runtimes\n\n", section_runtime(load("runtime"))]
    out += ["## int8 agreement\n\n", section_quantize(load("quantize"))]
    out += ["## Remote reads\n\n", section_remote(load("remote"))]
    out += ["## COG finish\n\n", section_cog_finish(load("cog_finish"))]
    out += ["## Vectorize\n\n", section_vectorize(vz)]
    out += ["## Map-judging outputs (QA layers, polygon confidence, class areas)\n\n", section_qa(load("qa_memory"))]
    out += ["## Grid dependence\n\n", section_seams(sm)]
    out += ["## Training\n\n", section_training(load("train_speed"))]
    out += ["## Leave-one-date-out accuracy\n\n", section_lodo(load("lodo"))]
    out += ["## GPU\n\n", section_gpu(load("gpu_check"), load("host_stages"), load("multi_gpu"))]
    out += ["## All results\n\n", section_other()]
    PAGE.write_text("".join(out).rstrip() + "\n", encoding="utf-8")
    return PAGE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="*", default=["predict_matrix"], choices=sorted(SCRIPTS))
    parser.add_argument("--no-run", action="store_true", help="Only rebuild the page from existing results.")
    args = parser.parse_args()
    if not args.no_run:
        for name in args.run:
            cmd = [sys.executable, str(HERE / SCRIPTS[name])]
            t0 = time.perf_counter()
            print("running", " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(write_page())


if __name__ == "__main__":
    main()
