# ruff: noqa: RUF001
"""The "Map-judging outputs" section of docs/performance.md, from bench/results/qa_memory.json."""

from __future__ import annotations

from typing import Any

_RUNS = {
    "plain": "class raster (and its class areas table, always written)",
    "qa": "+ every QA layer (probability, margin, entropy, disagreement)",
    "vector": "class raster + polygons",
    "everything": "QA layers + polygons with conf_mean, conf_min, disagree_frac",
}


def section_qa(qm: dict[str, Any] | None) -> str:
    if not qm:
        return "No results yet: run `bench/qa_memory.py`.\n\n"
    m = qm["machine"]
    out = [
        f"Peak memory of the outputs that judge a map (`bench/qa_memory.py`): a {qm['scene']} scene through "
        f"the stand-in model of the memory section ({qm['model']}; the reader, mosaic, writers, COGs and "
        f"vectorizer are the real ones), {qm['tile']} px tiles, overlap {qm['overlap']}, each run a fresh "
        f"process on {m['cpu']} ({m['cores']} cores). Peak is the process's VmHWM over the whole run, "
        "imports included.\n\n",
        "| run | peak RSS MB | tile loop s | blend s | write s | total s |\n",
        "|---|--:|--:|--:|--:|--:|\n",
    ]
    for name, label in _RUNS.items():
        r = qm["runs"].get(name)
        if r is None:
            continue
        sec = r["seconds"]
        out.append(
            f"| {name}: {label} | **{r['peak_rss_process_mb']:.0f}** | {sec['tiles_loop']:.0f} | "
            f"{sec['blend']:.0f} | {sec['write']:.0f} | {sec['total']:.0f} |\n"
        )
    ratios = qm.get("ratios", {})
    out.append("\n")
    if ratios:
        out.append(
            "Ratios: QA / plain **{qa}**, everything / plain **{ep}** (target {target}: {met}); everything / "
            "polygons {ev}, polygons / plain {vp}: the polygons run's tile loop (the same loop as plain's) "
            "peaks lower, repeatably, so the QA layers' own cost shows in everything / polygons.\n\n".format(
                qa=ratios.get("qa_over_plain", "–"),
                ep=ratios.get("everything_over_plain", "–"),
                ev=ratios.get("everything_over_vector", "–"),
                vp=ratios.get("vector_over_plain", "–"),
                target=qm["target"],
                met="met" if qm.get("meets_target") else "**not met**",
            )
        )
    out.append(
        "With a 1×1 convolution for a model the blend is most of the time, so the QA layers' extra blend "
        "seconds show as a large share here; with a real PSPNet (about 1 MP/s on this CPU, the fast preset) "
        "the same seconds are a small part of a run.\n\n"
    )
    return "".join(out)
