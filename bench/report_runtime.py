# ruff: noqa: RUF001
"""The runtime sections of docs/performance.md: torch vs ONNX Runtime (fp32, int8), and the int8 gate.

Rendered by ``bench/report.py`` from ``bench/results/runtime.json`` (``bench/runtime.py``) and
``bench/results/quantize.json`` (``bench/quantize.py``).
"""

from __future__ import annotations

from typing import Any


def _f(x: Any, nd: int = 2) -> str:
    return "–" if x is None else f"{float(x):.{nd}f}"


def _pct(x: Any, nd: int = 2) -> str:
    return "–" if x is None else f"{100 * float(x):.{nd}f} %"


def section_runtime(rt: dict[str, Any] | None) -> str:
    if rt is None:
        return "No results yet: run `python bench/runtime.py`.\n\n"
    m = rt["machine"]
    out = [
        f"`bench/runtime.py` on {m['cpu']} ({m['cores']} cores, {m['threads']} threads for the model; "
        f"native bf16: {'yes' if m.get('avx512_bf16') or m.get('amx_bf16') else 'no'}), every row of a table "
        "measured back to back in one run. Untrained weights (speed does not depend on them); the int8 models are "
        "calibrated on tiles of a synthetic scene with one candidate each: `int8` is what `geopsp model quantize` "
        "chose for the trained Sentinel-2 model on this CPU (pyramid pooling, stem and classifier kept in fp32), "
        "`int8 (all nodes)` quantizes every node (the speed ceiling; it fails the agreement gate on trained "
        "models).\n\n",
    ]
    if rt.get("model"):
        out.append(
            "**Model only**: one batch of 4 real 512 px tiles, 16 px margin, softmax.\n\n"
            "| preset | runtime | s / batch | Mpx/s | × torch fp32 |\n|---|---|---|---|---|\n"
        )
        for r in rt["model"]:
            note = " (bf16 emulated: no native bf16)" if r.get("bf16_emulated") else ""
            out.append(
                f"| {r['preset']} | {r['runtime']}{note} | {_f(r['seconds_per_batch'], 3)} | {_f(r['mpx_per_s'], 3)} | "
                f"{_f(r.get('speedup_vs_torch_fp32'))}× |\n"
            )
        out.append("\n")
    if rt.get("e2e"):
        out.append(
            "**End to end**: the whole `geopsp predict` process (start, imports, model load, read, model, blend, "
            "write the COG), each run in a fresh process; tiles 512, overlap 64, batch 4. *model share* is the "
            "model's share of the tile loop (end-to-end vs model-only speed inside the pipeline); *agreement* is "
            "the share of pixels with torch fp32's class.\n\n"
            "| preset | scene | runtime | wall s | Mpx/s | × torch fp32 | model share | peak RSS MB | agreement |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
        )
        for r in rt["e2e"]:
            out.append(
                f"| {r['preset']} | {r['scene']} | {r['runtime']} | {_f(r['wall_s'], 1)} | "
                f"{_f(r['mpx_per_s_process'], 3)} | {_f(r.get('speedup_vs_torch_fp32'))}× | "
                f"{_f(r['model_share_of_loop'])} | {_f(r['peak_rss_mb'], 0)} | "
                f"{_pct(r['agreement_with_torch_fp32'])} |\n"
            )
        out.append("\n")
    if rt.get("small"):
        out.append(
            "**A small scene** (400 × 400, 0.16 MP), the best of three whole-process runs; the `.onnx` runs have "
            "torch made unimportable. Target ≤ 2 s.\n\n| run | wall s | peak RSS MB |\n|---|---|---|\n"
        )
        for r in rt["small"]:
            out.append(f"| {r['runtime']} | {_f(r['wall_s'])} | {_f(r['peak_rss_mb'], 0)} |\n")
        out.append("\n")
    if rt.get("large"):
        r = rt["large"]
        out.append(
            f"**A large scene without torch**: {r['scene']} through {r['runtime']}: {_f(r['wall_s'], 0)} s "
            f"({_f(r['mpx_per_s_process'], 2)} Mpx/s), peak RSS **{_f(r['peak_rss_mb'], 0)} MB** (target ≤ 1024), "
            f"model share of the loop {_f(r['model_share_of_loop'])}.\n\n"
        )
    return "".join(out)


def section_quantize(q: dict[str, Any] | None) -> str:
    if q is None:
        return "No results yet: run `python bench/quantize.py`.\n\n"
    rows = []
    for key, label in (
        ("sentinel2", "Sentinel-2, LODO fold trained without 20230530"),
        ("demo", "quick-start demo bundle"),
        ("demo_train_val", "demo bundle, calibrated on train + val"),
    ):
        r = q.get(key)
        if not r:
            continue
        c = r["chosen"]
        rows.append(
            f"| {label} | {', '.join(r['calibration_scenes'])} | {r['check_scene']} | "
            f"{c['method']}, {'+'.join(c.get('keep_fp32') or []) or 'none'} in fp32 | "
            f"{_pct(r['check_scene_agreement'])} {'✅' if r['agreement_passes'] else '❌'} | "
            f"{_f(r['mean_f1_fp32'], 4)} → {_f(r['mean_f1_int8'], 4)} | "
            f"{_f(r['max_abs_f1_delta'], 4)} ({r['max_abs_f1_delta_class']}) {'✅' if r['f1_passes'] else '❌'} | "
            f"{_f(r['speed_2_threads']['int8_speedup'])}× |\n"
        )
    m = q["machine"]
    return (
        f"`bench/quantize.py` on {m['cpu']} (onnxruntime {m['onnxruntime']}; u8s8 may saturate here: "
        f"{m.get('u8s8_may_saturate')}): `geopsp model quantize` on trained bundles, the agreement of int8 with fp32 "
        "classes on the valid pixels of a scene used neither for training nor for calibration, and per-class F1 "
        "against its labels. Gates: agreement ≥ 99 %, |ΔF1| < 0.01 for every class.\n\n"
        "| bundle | calibrated on | scored on | kept | agreement | mean F1 fp32 → int8 | max |ΔF1| | int8 speed-up "
        "(model only, 4 × 256 px) |\n|---|---|---|---|---|---|---|---|\n" + "".join(rows) + "\n"
    )


def section_remote(rm: dict[str, Any] | None) -> str:
    if rm is None:
        return "No results yet: run `python bench/remote.py`.\n\n"
    m = rm["machine"]
    out = [
        f"`bench/remote.py` on {m['cpu']} ({m['cores']} cores): `geopsp predict` of a {rm['scene']} "
        f"({rm['model']}), once from the file on disk and once over HTTP with Range requests from a server on "
        "127.0.0.1, each in a fresh process. Target: the remote run's peak RSS within 1.2x of the local one and "
        "each byte fetched about once.\n\n",
        "| read | wall s | peak RSS MB | bytes fetched / file | requests |\n|---|---|---|---|---|\n",
    ]
    for r in rm["runs"]:
        ratio = r.get("fetched_over_file")
        out.append(
            f"| {r['read']} | {_f(r['wall_s'], 1)} | {_f(r['peak_rss_mb'], 0)} | "
            f"{_f(ratio, 3) if ratio is not None else '–'} | {r.get('requests', '–')} |\n"
        )
    out.append(
        f"\nPeak RSS remote / local: **{_f(rm['rss_ratio_remote_over_local'], 3)}x**; classes identical: "
        f"{'yes' if rm['classes_identical'] else '**no**'}. The overviews are not in the file (a COG without "
        "them), so a full-resolution run needs every byte once; the excess is the header chunk fetched again by "
        "the reader threads. Nothing else ran on the machine; the two runs are back to back, so their wall "
        "times compare too (the loopback server costs no network time: a real one adds its latency).\n\n"
    )
    return "".join(out)
