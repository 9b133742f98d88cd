"""Grid dependence: how much a trained model's class map changes when the tile grid moves.

The quick-start demo scene is predicted with the demo's trained model twice: once as it is
(scene *A*) and once cropped by half a stride at the top and the left (scene *B*, a real
GeoTIFF with the shifted transform), so that B's tile grid is moved by ``stride / 2`` against
the content. Over the common area (A's rows and columns from ``shift`` on; pixels valid in
both maps) it records:

* ``disagreement``: the fraction of pixels whose class differs between the two maps;
* ``border_ratio``: the disagreement on *border* pixels divided by the disagreement elsewhere.
  A border pixel lies within ``--border`` px (4) of an interior tile edge of either grid: the
  edge lines are the first and one-past-last row (column) of every tile window of
  :class:`geopsp.tiling.windows.TileGrid` that fall inside the scene (scene edges are not
  tile edges), mapped into the common area; a pixel ``y`` is within ``b`` px of the line ``e``
  when ``e - b <= y < e + b``. A ratio of 1 means the tile edges leave no trace;
* the same two figures without the *crop band* (``*_interior``), and the disagreement in that
  band: the pixels within one tile of the top or left of the common area, where B's scene was
  cut and A's goes on. There B has lost the context the crop removed and its first tiles sit at
  a scene edge, so the maps differ more whatever the tiling does: it measures the crop, not the
  grid;
* the disagreement against the distance to the nearest tile edge (a profile), and the overall
  accuracy of map A against the scene's labels (so a variant cannot buy agreement with
  accuracy);
* the cost: ``work_ratio``, the pixels the model runs on for scene A (tiles x model input x
  TTA passes) over the baseline's, and the fastest of ``--repeats`` runs of A, as wall and CPU
  seconds. The machine may be shared, so times are reported as ratios to the baseline measured
  in the same run (which runs first and again last, to show the drift), with the load average.

Variants change one or two things from the baseline, the demo's tiling with the settings
geopsp had before this benchmark (tile 256, overlap 32, cosine blending with floor 0.05, no TTA,
no margin): the blend kernel and floor, the overlap, the test-time augmentation, and the
reflection margin around each tile (``predict.margin_px``: the tile padded by reflection before
the model and the margin cropped off its logits, so the convolutions' zero padding falls
outside the kept pixels). The row whose settings are the package defaults is marked.

The model comes from ``geopsp demo``, run once into the cache folder ``--demo`` and reused by
later runs; ``--model`` and ``--scene`` point at an existing bundle and scene instead. The demo
trains for a time budget, not a number of epochs; its default 3 minutes gave only 6 epochs on a
loaded 2-core machine, a model unsure of so many pixels that its two maps differed on 4.6 % of
them everywhere, drowning the tile edges; so the benchmark trains for ``--train-minutes`` 8
(about 30 epochs there).

Usage::

    python bench/seams.py [--demo DIR] [--model PATH] [--scene PATH] [--variants NAME ...] [--quick]
                          [--out bench/results/seams.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from predict_matrix import machine  # noqa: E402  (the machine fields every bench JSON uses)

BORDER_PX = 4
DEFAULT_KEYS = ("blend", "blend_floor", "tta", "margin_px")  # the settings the variants change
PROFILE_BINS = (0, 4, 8, 16, 32, 64)
# The demo's prediction setting (geopsp.demo.run_demo), the baseline of every variant.
BASE: dict[str, Any] = {
    "tile_size": 256,
    "overlap": 32,
    "batch_size": 8,
    "blend": "cosine",
    "blend_floor": 0.05,
    "tta": "none",
    "margin_px": 0,
}


def variants() -> list[tuple[str, dict[str, Any]]]:
    """``(name, change from BASE)`` of every variant; ``base`` first."""
    return [
        ("base", {}),
        ("floor 0.01", {"blend_floor": 0.01}),
        ("floor 0.001", {"blend_floor": 0.001}),
        ("gaussian", {"blend": "gaussian"}),
        ("gaussian floor 0.001", {"blend": "gaussian", "blend_floor": 0.001}),
        ("uniform", {"blend": "uniform"}),
        ("overlap 64", {"overlap": 64}),
        ("overlap 96", {"overlap": 96}),
        ("overlap 127", {"overlap": 127}),
        ("margin 16", {"margin_px": 16}),
        ("margin 32", {"margin_px": 32}),
        ("tta flip", {"tta": "flip"}),
        ("tta d4", {"tta": "d4"}),
        ("floor 0.0001", {"blend_floor": 0.0001}),
        ("floor 0.001, margin 16", {"blend_floor": 0.001, "margin_px": 16}),
        ("floor 0.001, margin 32", {"blend_floor": 0.001, "margin_px": 32}),
        ("floor 0.001, overlap 64", {"blend_floor": 0.001, "overlap": 64}),
        # a margin of real context instead of a reflected one: 16 px more on each side, the same stride
        ("tile 288, overlap 64, floor 0.001", {"tile_size": 288, "overlap": 64, "blend_floor": 0.001}),
    ]


# ---------------------------------------------------------------------------------------------
# inputs


def demo_inputs(demo: Path, train_minutes: float) -> tuple[Path, Path, Path]:
    """``(bundle, scene, labels)`` of a demo folder; run the demo into it when it has none."""
    bundle = demo / "model" / "best.safetensors"
    scene = demo / "data" / "predict" / "scene.tif"
    labels = demo / "data" / "predict" / "scene_labels.tif"
    if not (bundle.exists() and scene.exists()):
        from geopsp.demo import run_demo

        print(f"running the demo into {demo} ({train_minutes:g} min of training)", file=sys.stderr, flush=True)
        say = lambda m: print(f"  {m}", file=sys.stderr, flush=True)  # noqa: E731
        res = run_demo(demo, train_minutes=train_minutes, overwrite=True, step=say)
        bundle, scene, labels = res.bundle, res.scene, res.labels
    return bundle, scene, labels


def crop(scene: Path, out: Path, row: int, col: int, height: int, width: int) -> Path:
    """Write a window of ``scene`` as a GeoTIFF of its own, georeferenced where the window was."""
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    with rasterio.open(scene) as src:
        win = Window(col, row, width, height)
        profile = src.profile.copy()
        profile.update(width=width, height=height, transform=window_transform(win, src.transform))
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=win))
            dst.update_tags(**src.tags())
    return out


def shifted(scene: Path, out: Path, shift: int) -> Path:
    """``scene`` without its first ``shift`` rows and columns: its tile grid moves by ``shift``."""
    import rasterio

    with rasterio.open(scene) as src:
        h, w = src.height, src.width
    return crop(scene, out, shift, shift, h - shift, w - shift)


# ---------------------------------------------------------------------------------------------
# metrics


def edge_lines(grid: Any, axis: int) -> list[int]:
    """Interior tile edges of ``grid`` along ``axis`` (0: rows, 1: columns), scene coordinates."""
    length = grid.height if axis == 0 else grid.width
    n = grid.shape[axis]
    lines: set[int] = set()
    for i in range(n):
        t = grid.tile(i, 0) if axis == 0 else grid.tile(0, i)
        start, end = (t.row, t.row_end) if axis == 0 else (t.col, t.col_end)
        lines.update(e for e in (start, end) if 0 < e < length)
    return sorted(lines)


def edge_distance(lines: list[int], length: int) -> np.ndarray:
    """Distance of each pixel centre ``y + 0.5`` to the nearest line, minus 0.5 (0 for the pixels touching one).

    A pixel ``y`` is within ``b`` px of the line ``e`` exactly when ``e - b <= y < e + b``, i.e. its
    value here is ``< b``.
    """
    if not lines:
        return np.full(length, np.inf)
    y = np.arange(length, dtype=np.float64) + 0.5
    e = np.asarray(lines, dtype=np.float64)
    return np.abs(y[:, None] - e[None, :]).min(axis=1) - 0.5


def _rate(differ: np.ndarray, sel: np.ndarray) -> float:
    return float(differ[sel].mean()) if sel.any() else float("nan")


def _ratio_se(differ: np.ndarray, near: np.ndarray, far: np.ndarray) -> float | None:
    """Binomial standard error of ``rate(near) / rate(far)`` (a lower bound: errors cluster in space)."""
    n1, n2 = int(near.sum()), int(far.sum())
    k1, k2 = int(differ[near].sum()), int(differ[far].sum())
    if not (k1 and k2):
        return None
    r = (k1 / n1) / (k2 / n2)
    return round(r * float(np.sqrt((1 - k1 / n1) / k1 + (1 - k2 / n2) / k2)), 4)


def compare(
    a: np.ndarray, b: np.ndarray, nodata: int, grids: list[tuple[Any, int]], *, border: int, crop_band: int
) -> dict[str, Any]:
    """Compare two class maps of the common area.

    ``grids`` are ``(grid, offset of the common area in its scene)``. ``crop_band``: the rows and
    columns this close to the top and left of the common area, where ``b``'s scene was cut and
    ``a``'s goes on, are also reported on their own, and the ``*_interior`` figures leave them out.
    """
    h, w = b.shape
    dy = np.full(h, np.inf)
    dx = np.full(w, np.inf)
    for grid, off in grids:
        dy = np.minimum(dy, edge_distance([e - off for e in edge_lines(grid, 0) if 0 < e - off < h], h))
        dx = np.minimum(dx, edge_distance([e - off for e in edge_lines(grid, 1) if 0 < e - off < w], w))
    dist = np.minimum(dy[:, None], dx[None, :])
    valid = (a != nodata) & (b != nodata)
    differ = (a != b) & valid
    cropped = np.zeros((h, w), dtype=bool)
    cropped[:crop_band] = True
    cropped[:, :crop_band] = True
    out: dict[str, Any] = {"valid_pixels": int(valid.sum()), "border_pixels": int((valid & (dist < border)).sum())}
    for suffix, sel in (("", valid), ("_interior", valid & ~cropped)):
        near, far = _rate(differ, sel & (dist < border)), _rate(differ, sel & (dist >= border))
        out[f"disagreement{suffix}"] = round(_rate(differ, sel), 6)
        out[f"disagreement_border{suffix}"] = round(near, 6)
        out[f"disagreement_elsewhere{suffix}"] = round(far, 6)
        out[f"border_ratio{suffix}"] = round(near / far, 4) if far > 0 else None
        out[f"border_ratio{suffix}_se"] = _ratio_se(differ, sel & (dist < border), sel & (dist >= border))
    out["disagreement_crop_band"] = round(_rate(differ, valid & cropped), 6)
    out["crop_band_pixels"] = int((valid & cropped).sum())
    profile = []
    for lo, hi in itertools.pairwise([*PROFILE_BINS, np.inf]):
        sel = (dist >= lo) & (dist < hi) & valid & ~cropped
        rate = _rate(differ, sel)
        profile.append(
            {
                "from_px": lo,
                "to_px": None if hi == np.inf else hi,
                "pixels": int(sel.sum()),
                "disagreement": None if np.isnan(rate) else round(rate, 6),
            }
        )
    out["profile_interior"] = profile
    return out


def accuracy(classes: Path, labels: Path, nodata: int) -> float | None:
    """Share of labelled, predicted pixels whose class matches the label (``None`` without labels)."""
    if not labels.exists():
        return None
    import rasterio

    with rasterio.open(classes) as c, rasterio.open(labels) as lab:
        p, t = c.read(1), lab.read(1)
        ignore = lab.nodata if lab.nodata is not None else 255
    sel = (p != nodata) & (t != ignore)
    return round(float((p[sel] == t[sel]).mean()), 6) if sel.any() else None


# ---------------------------------------------------------------------------------------------
# runs


def predict(scene: Path, bundle: Any, out: Path, settings: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    from geopsp.config.schema import PredictConfig
    from geopsp.pipeline import segment_raster

    cfg = PredictConfig.model_validate({**settings, "device": "cpu"})
    cpu0 = _cpu_seconds()
    res = segment_raster(scene, bundle, out, config=cfg, overwrite=True)
    return res.classes, {**res.summary, "cpu_s": _cpu_seconds() - cpu0}


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_variant(
    name: str, settings: dict[str, Any], inputs: dict[str, Any], folder: Path, *, border: int, repeats: int
) -> dict[str, Any]:
    import rasterio

    from geopsp.inference.predict import TTA_TRANSFORMS
    from geopsp.tiling.windows import TileGrid

    bundle, nodata, shift = inputs["bundle"], inputs["nodata"], inputs["shift"]
    load0 = os.getloadavg()[0]
    maps, grids, tiles = [], [], []
    wall_a, cpu_a = [], []
    for key in ("A",) * repeats + ("B",):
        path, summary = predict(inputs[key], bundle, folder / key, settings)
        if key == "A":
            wall_a.append(summary["seconds"]["total"])
            cpu_a.append(summary["cpu_s"])
            if len(wall_a) > 1:
                continue
            acc = accuracy(path, inputs["labels"], nodata)
        with rasterio.open(path) as src:
            maps.append(src.read(1))
        tiles.append(summary["tiles"]["run"])
        size = summary["size"]
        grids.append(
            TileGrid(size["height"], size["width"], summary["tiles"]["tile_size"], summary["tiles"]["overlap"])
        )
    a = maps[0][shift:, shift:]
    side = settings["tile_size"] + 2 * settings["margin_px"]
    row = {
        "variant": name,
        **settings,
        "stride": settings["tile_size"] - settings["overlap"],
        **compare(a, maps[1], nodata, [(grids[0], shift), (grids[1], 0)], border=border, crop_band=BASE["tile_size"]),
        "accuracy_a": acc,
        "tiles_run": tiles,
        # pixels through the model for scene A: tiles x model input x TTA passes
        "model_megapixels_a": round(tiles[0] * side * side * len(TTA_TRANSFORMS[settings["tta"]]) / 1e6, 3),
        "wall_a_s": [round(t, 2) for t in wall_a],
        "cpu_a_s": [round(t, 2) for t in cpu_a],
        "load_avg_1min_before": round(load0, 2),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "profile_interior"}), file=sys.stderr, flush=True)
    return row


def timing(scene: Path, bundle: Any, folder: Path, *, pairs: int) -> list[dict[str, Any]]:
    """The baseline and the package defaults on scene A, alternating, at the demo's tiles and at 512 px.

    Alternating runs see the same load drift, so the median of the per-pair ratios is steadier
    than ratios of single runs far apart.
    """
    import statistics

    from geopsp.config.schema import PredictConfig

    defaults = PredictConfig().model_dump()
    out = []
    for tile, overlap in ((BASE["tile_size"], BASE["overlap"]), (512, 64)):
        old = {**BASE, "tile_size": tile, "overlap": overlap}
        new = {**old, **{k: defaults[k] for k in DEFAULT_KEYS}}
        runs: list[list[tuple[float, float]]] = [[], []]
        for _ in range(pairs):
            for i, settings in enumerate((old, new)):
                _, summary = predict(scene, bundle, folder / "timing", settings)
                runs[i].append((summary["seconds"]["total"], summary["cpu_s"]))
        wall = [n[0] / o[0] for o, n in zip(runs[0], runs[1], strict=True)]
        cpu = [n[1] / o[1] for o, n in zip(runs[0], runs[1], strict=True)]
        side = tile + 2 * new["margin_px"]
        row = {
            "tile_size": tile,
            "overlap": overlap,
            "pairs": pairs,
            "baseline_wall_s": [round(w, 2) for w, _ in runs[0]],
            "defaults_wall_s": [round(w, 2) for w, _ in runs[1]],
            "baseline_cpu_s": [round(c, 2) for _, c in runs[0]],
            "defaults_cpu_s": [round(c, 2) for _, c in runs[1]],
            "work_ratio": round(side * side / tile / tile, 3),
            "median_wall_ratio": round(statistics.median(wall), 3),
            "median_cpu_ratio": round(statistics.median(cpu), 3),
            "load_avg_1min_before": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path(tempfile.gettempdir()) / "geopsp-seams-demo")
    parser.add_argument("--train-minutes", type=float, default=8.0, help="Training budget of a new demo run.")
    parser.add_argument("--model", type=Path, help="A trained bundle (default: the demo folder's).")
    parser.add_argument("--scene", type=Path, help="The scene (default: the demo folder's).")
    parser.add_argument("--labels", type=Path, help="Labels of the scene (default: the demo folder's).")
    parser.add_argument("--variants", nargs="+", help="Names of the variants to run (default: all).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of scene A per variant; the fastest is kept.")
    parser.add_argument("--parts", nargs="+", default=["variants", "timing"], choices=["variants", "timing"])
    parser.add_argument("--pairs", type=int, default=5, help="Alternating baseline/defaults pairs of the timing.")
    parser.add_argument("--border", type=int, default=BORDER_PX, help="Width of the border zone (px).")
    parser.add_argument("--quick", action="store_true", help="A 640 px piece of the scene, two variants.")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "seams.json")
    args = parser.parse_args()

    from geopsp.config.schema import PredictConfig
    from geopsp.model.bundle import load_bundle

    if args.model is None or args.scene is None:
        d_bundle, d_scene, d_labels = demo_inputs(args.demo, args.train_minutes)
    bundle_path = args.model or d_bundle
    scene = args.scene or d_scene
    labels = args.labels or (d_labels if args.scene is None else Path("-missing-"))
    bundle = load_bundle(bundle_path, device="cpu")
    todo = variants()
    if args.variants:
        known = dict(todo)
        unknown = [v for v in args.variants if v not in known]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {list(known)}")
        todo = [("base", {})] + [(v, known[v]) for v in args.variants if v != "base"]
    if args.quick:
        todo = todo[:2]
        if args.out == HERE / "results" / "seams.json":
            args.out = Path(tempfile.gettempdir()) / "seams_quick.json"

    with tempfile.TemporaryDirectory(prefix="geopsp-seams-") as tmp:
        folder = Path(tmp)
        if args.quick:
            scene = crop(scene, folder / "quick.tif", 704, 704, 640, 640)  # the middle of the 2048 px scene
            labels = Path("-missing-")
        shift = (BASE["tile_size"] - BASE["overlap"]) // 2
        inputs = {
            "bundle": bundle,
            "nodata": bundle.meta.nodata,
            "shift": shift,
            "A": scene,
            "B": shifted(scene, folder / "shifted.tif", shift),
            "labels": labels,
        }
        t0 = time.perf_counter()
        result: dict[str, Any] = {}
        if args.out.exists() and not args.quick:
            previous = json.loads(args.out.read_text())
            result = {k: v for k, v in previous.items() if k in ("variants", "timing", "loadavg_after")}
        if "variants" in args.parts:
            kw = {"border": args.border, "repeats": args.repeats}
            rows = [run_variant(n, {**BASE, **c}, inputs, folder, **kw) for n, c in todo]
            if len(todo) > 2:  # the baseline again, to show how much the load drifted
                rows.append(run_variant("base (again)", dict(BASE), inputs, folder, **kw))
            result["variants"] = finish_rows(rows)
        if "timing" in args.parts:
            result["timing"] = timing(scene, bundle, folder, pairs=1 if args.quick else args.pairs)
        wall = time.perf_counter() - t0
    with open("/proc/loadavg", encoding="ascii") as fh:
        loadavg = fh.read().strip()
    prov = bundle.meta.provenance
    after = result.get("loadavg_after")
    after = after if isinstance(after, dict) else {"variants": after} if after else {}
    result |= {
        "machine": machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_after": after | dict.fromkeys(args.parts, loadavg),
        "model": {
            "bundle": str(bundle_path),
            "arch": bundle.meta.spec.arch,
            "encoder": bundle.meta.spec.encoder,
            "bundle_tile_size": bundle.meta.tile_size,
            "bundle_overlap": bundle.meta.overlap,
            "epochs": prov.get("epochs"),
            "val_miou": (prov.get("metrics") or {}).get("val_miou"),
        },
        "scene": {"path": str(scene), "shift_px": shift},
        "border_px": args.border,
        "base": BASE,
        "defaults": {k: PredictConfig().model_dump()[k] for k in DEFAULT_KEYS},
        "bench_wall_s": round(wall, 1),
        "quick": args.quick,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


def finish_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark the defaults' row; costs relative to the first row (the baseline)."""
    from geopsp.config.schema import PredictConfig

    defaults = PredictConfig().model_dump()
    base = rows[0]
    for r in rows:
        r["is_default"] = r["variant"] != "base (again)" and all(r[k] == defaults[k] for k in DEFAULT_KEYS)
        r["work_ratio"] = round(r["model_megapixels_a"] / base["model_megapixels_a"], 3)
        r["time_ratio"] = round(min(r["wall_a_s"]) / min(base["wall_a_s"]), 3)
        r["cpu_ratio"] = round(min(r["cpu_a_s"]) / min(base["cpu_a_s"]), 3)
    return rows


if __name__ == "__main__":
    main()
