# ruff: noqa: RUF001
"""The "COG finish" section of docs/performance.md, from bench/results/cog_finish.json."""

from __future__ import annotations

from typing import Any

_PATHS = {
    "before": "before: ZSTD-1 staging, then GDAL's COG copy (MODE overviews)",
    "gdal_assembly": "candidate: DEFLATE staging + NumPy MODE levels, then GDAL's COG copy of them",
    "after": "after: DEFLATE staging + NumPy MODE levels, then the tiles copied (now)",
}


def _f(x: float, nd: int = 1) -> str:
    return f"{x:.{nd}f}"


def section_cog_finish(cf: dict[str, Any] | None) -> str:
    if not cf:
        return "No results yet: run `bench/cog_finish.py`.\n\n"
    m, med, scene = cf["machine"], cf["median"], cf["scene"]
    mp = scene["megapixels"]
    out = [
        "What finishing the class raster costs after the tile loop (`bench/cog_finish.py`): a synthetic "
        f"{scene['width']}×{scene['height']} px class map ({_f(mp, 0)} MP; blobby classes like a land-cover "
        "map, a nodata corner) written block row by block row as the writer thread does, then closed. "
        "*Loop* is the CPU the writer spends while rows come (beside the model); *finish* is `close()`, "
        "after the last row: the serial tail. CPU is the process's user + system time, all threads; medians "
        "of the repeats, alternating the order.\n\n",
        "| path | GDAL threads | loop CPU ms/MP | finish CPU ms/MP | total CPU ms/MP | finish wall s |\n",
        "|---|---|--:|--:|--:|--:|\n",
    ]
    for threads in ("1", "ALL_CPUS"):
        for name, label in _PATHS.items():
            r = med.get(f"{name}@{threads}")
            if r is None:
                continue
            out.append(
                f"| {label} | {threads} | {_f(r['loop_cpu_ms_per_mp'])} | **{_f(r['finish_cpu_ms_per_mp'])}** | "
                f"{_f(r['total_cpu_ms_per_mp'])} | {_f(r['finish_wall_s'], 2)} |\n"
            )
    before, after = med.get("before@ALL_CPUS"), med.get("after@ALL_CPUS")
    if before and after:
        out.append(
            f"\nThe serial tail goes from {_f(before['finish_cpu_ms_per_mp'])} to "
            f"{_f(after['finish_cpu_ms_per_mp'])} ms of CPU per MP "
            f"({_f(before['finish_wall_s'], 2)} s to {_f(after['finish_wall_s'], 2)} s for this scene; for a "
            f"400 MP scene about {_f(before['finish_wall_ms_per_mp'] * 0.4, 1)} s to "
            f"{_f(after['finish_wall_ms_per_mp'] * 0.4, 1)} s), and the writer's CPU in all from "
            f"{_f(before['total_cpu_ms_per_mp'])} to {_f(after['total_cpu_ms_per_mp'])} ms per MP. "
            "GDAL 3.10's COG driver decodes and encodes every tile whatever its source (it copies compressed "
            "tiles only for JPEG), so precomputed overviews alone (the candidate) still leave the full-resolution "
            "encode in the tail; copying the staged tiles into a skeleton GDAL writes with no tile in it "
            "(`geopsp/io/tiff_layout.py`) leaves only file copying. The overview levels are GDAL's MODE "
            "(and AVERAGE for probabilities), reproduced in NumPy window for window "
            "(`geopsp/io/overviews.py`).\n\n"
        )
    checks = cf.get("checks", {})
    if checks:
        ba = checks["before_vs_after"]
        out.append(
            "Checks on these outputs: before and after have "
            + ("the same pixels at every level" if ba["pixels_and_overviews_equal"] else "DIFFERENT pixels")
            + (" and are the same file, byte for byte" if ba["same_bytes"] else "")
            + f"; GDAL reports `LAYOUT={ba['layout']}`; GDAL's COG validator (`--full-check=yes`): "
            f"{checks['after_gdal_validator']}.\n\n"
        )
    st = cf.get("stitch")
    if st:
        smp = st["megapixels"]
        b, a = st["before"], st["after"]
        out += [
            f"Stitching {len(st['strips'])} strips of about {_f(smp / len(st['strips']), 0)} MP "
            f"({_f(smp, 0)} MP in all), as `geopsp batch` does:\n\n",
            "| stitch | CPU s | CPU ms/MP | wall s |\n|---|--:|--:|--:|\n",
            f"| before: strips decoded, rows written through the old writer | {_f(b['cpu_s'])} | "
            f"{_f(1e3 * b['cpu_s'] / smp)} | {_f(b['wall_s'])} |\n",
            f"| after: strips' tiles copied, the overview levels from the strips' own | {_f(a['cpu_s'])} | "
            f"{_f(1e3 * a['cpu_s'] / smp)} | {_f(a['wall_s'])} |\n\n",
            "The stitched raster is byte for byte the raster of the whole scene written at once: "
            + ("yes" if st["after_equals_whole_scene_raster_bytes"] else "NO")
            + ".\n\n",
        ]
    start, end = m["load_1_5_15min_at_start"], m.get("load_1_5_15min_at_end", [float("nan")] * 3)
    out.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, GDAL {m['gdal']}, rasterio {m['rasterio']}, NumPy {m['numpy']}. "
        f"**Shared**: other jobs were running (1-minute load {_f(start[0], 2)} at the start, {_f(end[0], 2)} at "
        "the end, on 2 cores; each run records its own), so absolute numbers are pessimistic; compare the rows "
        "of one run with each other.\n\n"
    )
    return "".join(out)
