"""How much CPU does finishing a class raster COG cost, and how much of it is left after the last row?

The class raster writer used to stage rows in a ZSTD-1 tiled GeoTIFF and, at ``close()``, have
GDAL's COG driver copy it to a DEFLATE COG with MODE overviews: a serial tail after the tile
loop. This measures, on a synthetic class map (blobby land-cover-like classes, a nodata corner),
the CPU seconds per scene megapixel of

* ``before``: ZSTD-1 staging while the rows come, then GDAL's COG copy (the old writer);
* ``gdal_assembly``: the rows staged as DEFLATE tiles with overview levels reduced in NumPy as
  they come (:class:`geopsp.io.cog_stage.CogStage`), then GDAL's COG copy of the staged levels
  (``OVERVIEWS=FORCE_USE_EXISTING``): GDAL decodes and encodes every tile again;
* ``after``: the same staging, then the compressed tiles copied into a GDAL-written skeleton
  (:class:`geopsp.io.raster.ClassRasterWriter` as it is now),

split into the *loop* (what the writer thread does while the model runs) and the *finish*
(``close()``, after the last row), with GDAL on 1 thread and on all CPUs. It checks that
the outputs of ``before`` and ``after`` are the same pixels, overviews included (and whether
they are the same bytes), and that ``after`` passes GDAL's COG validator when the system Python
has GDAL's bindings.

It then stitches 4 strips of about 50 MP, as ``geopsp batch`` does: ``before`` decodes them
and writes their rows through the old writer; ``after`` copies their tiles and builds the
overview levels from the strips' own (:meth:`~geopsp.io.raster.ClassRasterWriter.write_strip`).
Results go to ``bench/results/cog_finish.json``.

Usage::

    python bench/cog_finish.py [--size 10240] [--repeat 2] [--out bench/results/cog_finish.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

from geopsp.classes import ClassTable
from geopsp.device import gdal_threads, set_gdal_threads
from geopsp.io.cog import to_cog
from geopsp.io.cog_stage import CogSpec, CogStage
from geopsp.io.raster import ClassRasterWriter
from geopsp.testing import random_class_map

BLOCK = 512
NODATA = 255
CLASSES = ClassTable.from_names([f"class{i}" for i in range(6)])
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_700_000.0)
CRS = "EPSG:32633"
SYSTEM_PYTHON = "/usr/bin/python3"


def cpu() -> float:
    """CPU seconds of this process, all threads (GDAL's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Scene:
    """A class map made block row by block row: a 2048 px blobby map, mirrored and tiled, a nodata corner."""

    def __init__(self, height: int, width: int) -> None:
        base = random_class_map(2048, 2048, n_classes=6, seed=3, blob_scale=40.0)
        tile = np.block([[base, base[:, ::-1]], [base[::-1], base[::-1, ::-1]]])
        self.height, self.width = height, width
        self._tile = tile
        self._reps = -(-width // tile.shape[1])

    def rows(self, r0: int, n: int) -> np.ndarray:
        idx = np.arange(r0, r0 + n) % self._tile.shape[0]
        out = np.tile(self._tile[idx], (1, self._reps))[:, : self.width].copy()
        corner = max(0, min(r0 + n, self.height // 4) - r0)
        out[:corner, : self.width // 3] = NODATA
        return out

    def block_rows(self, r0: int = 0, r1: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        r1 = self.height if r1 is None else r1
        for r in range(r0, r1, BLOCK):
            yield r, self.rows(r, min(BLOCK, r1 - r))


def writer_for(path: Path, height: int, width: int, transform: Affine = TRANSFORM) -> ClassRasterWriter:
    return ClassRasterWriter(
        path,
        width=width,
        height=height,
        crs=CRS,
        transform=transform,
        classes=CLASSES,
        nodata=NODATA,
        overwrite=True,
    )


def old_stage_profile(height: int, width: int) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "nodata": NODATA,
        "crs": CRS,
        "transform": TRANSFORM,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "zstd",
        "zstd_level": 1,
        "sparse_ok": True,
        "bigtiff": "IF_SAFER",
    }


def old_finish(stage: Path, out: Path) -> None:
    """The old writer's close(): GDAL's COG driver from the ZSTD-1 staging file, MODE overviews."""
    rasterio.shutil.copy(
        stage,
        out,
        driver="COG",
        COMPRESS="DEFLATE",
        BLOCKSIZE=BLOCK,
        OVERVIEW_RESAMPLING="MODE",
        BIGTIFF="IF_SAFER",
        NUM_THREADS=gdal_threads(),
    )
    stage.unlink()


def timed(loop: Callable[[], Any], finish: Callable[[Any], None]) -> dict[str, float]:
    load = os.getloadavg()[0]
    c0, w0 = cpu(), time.perf_counter()
    state = loop()
    c1, w1 = cpu(), time.perf_counter()
    finish(state)
    c2, w2 = cpu(), time.perf_counter()
    return {
        "loop_cpu_s": c1 - c0,
        "loop_wall_s": w1 - w0,
        "finish_cpu_s": c2 - c1,
        "finish_wall_s": w2 - w1,
        "load_1min_before": load,
    }


def run_before(scene: Scene, out: Path) -> dict[str, float]:
    stage = out.with_name("before-stage.tif")

    def loop() -> None:
        with rasterio.open(stage, "w", **old_stage_profile(scene.height, scene.width)) as dst:
            cmap = {c.id: (*c.color, 255) for c in CLASSES}
            cmap[NODATA] = (0, 0, 0, 0)
            dst.write_colormap(1, cmap)
            dst.set_band_description(1, "class")
            dst.update_tags(GEOPSP_CLASSES=CLASSES.to_json())
            for r, rows in scene.block_rows():
                dst.write(rows[np.newaxis], [1], window=Window(0, r, scene.width, rows.shape[0]))

    return timed(loop, lambda _: old_finish(stage, out))


def run_gdal_assembly(scene: Scene, out: Path) -> dict[str, float]:
    """Candidate (a) finished by GDAL: staged DEFLATE tiles and NumPy overview levels, then GDAL's COG copy."""
    spec = CogSpec(scene.width, scene.height, "uint8", NODATA, BLOCK, "deflate", "MODE", crs=CRS, transform=TRANSFORM)

    def loop() -> CogStage:
        stage = CogStage(spec, lambda tag: out.with_name(f"gdal-{tag}{out.name}"))
        for r, rows in scene.block_rows():
            stage.write(r, rows)
        return stage

    def finish(stage: CogStage) -> None:
        # the staging files as CogStage leaves them before assembling; GDAL copies them instead
        stage._close_writers()
        to_cog(stage.stage_path, out, overviews=stage._level_paths, compress="deflate", blocksize=BLOCK)
        stage.abort()
        for p in out.parent.glob("gdal-*"):
            p.unlink()

    return timed(loop, finish)


def run_after(scene: Scene, out: Path) -> dict[str, float]:
    def loop() -> ClassRasterWriter:
        w = writer_for(out, scene.height, scene.width)
        for r, rows in scene.block_rows():
            w.write_rows(r, rows)
        return w

    return timed(loop, lambda w: w.close())


def same_pixels(a: Path, b: Path) -> dict[str, Any]:
    """Compare two COGs block row by block row, full resolution and every overview."""
    with rasterio.open(a) as x, rasterio.open(b) as y:
        levels = len(x.overviews(1))
        same_levels = x.overviews(1) == y.overviews(1)
        layout = y.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
    equal = same_levels
    for k in [None, *range(levels)]:
        kw = {} if k is None else {"overview_level": k}
        with rasterio.open(a, **kw) as x, rasterio.open(b, **kw) as y:
            for r in range(0, x.height, 2048):
                win = Window(0, r, x.width, min(2048, x.height - r))
                equal = equal and bool(np.array_equal(x.read(1, window=win), y.read(1, window=win)))
    return {"pixels_and_overviews_equal": equal, "levels": levels, "layout": layout, "same_bytes": _same_bytes(a, b)}


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as x, open(b, "rb") as y:
        while True:
            u, v = x.read(1 << 24), y.read(1 << 24)
            if u != v:
                return False
            if not u:
                return True


def gdal_validator(path: Path) -> str:
    """GDAL's validate_cloud_optimized_geotiff (--full-check), run by the system Python, if it has it."""
    if not Path(SYSTEM_PYTHON).exists():
        return "not run: no system python3"
    run = subprocess.run(
        [SYSTEM_PYTHON, "-m", "osgeo_utils.samples.validate_cloud_optimized_geotiff", "--full-check=yes", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if "No module named" in run.stderr:
        return "not run: no GDAL bindings"
    return "valid" if run.returncode == 0 else (run.stdout + run.stderr).strip()[-300:]


def stitch(folder: Path, scene: Scene, strips: int) -> dict[str, Any]:
    """4 strips of ~50 MP (block rows), written as strip runs write them; stitched the old way and the new."""
    rows_per = -(-scene.height // strips // BLOCK) * BLOCK
    bounds = [*range(0, scene.height, rows_per), scene.height]
    parts = []
    for r0, r1 in itertools.pairwise(bounds):
        path = folder / f"strip{r0}.tif"
        w = writer_for(path, r1 - r0, scene.width, TRANSFORM @ Affine.translation(0, r0))
        for r, rows in scene.block_rows(r0, r1):
            w.write_rows(r - r0, rows)
        w.close()
        parts.append((r0, path))
    whole = folder / "whole.tif"
    run_after(scene, whole)

    def before() -> None:
        stage = folder / "stitch-before-stage.tif"
        with rasterio.open(stage, "w", **old_stage_profile(scene.height, scene.width)) as dst:
            for r0, path in parts:
                with rasterio.open(path) as src:
                    dst.write_colormap(1, src.colormap(1))
                    dst.update_tags(**src.tags())
                    dst.set_band_description(1, src.descriptions[0])
                    for r in range(0, src.height, BLOCK):
                        rows = src.read(1, window=Window(0, r, src.width, min(BLOCK, src.height - r)))
                        dst.write(rows[np.newaxis], [1], window=Window(0, r0 + r, scene.width, rows.shape[0]))
        old_finish(stage, folder / "stitch-before.tif")

    def after() -> None:
        w = writer_for(folder / "stitch-after.tif", scene.height, scene.width)
        for r0, path in parts:
            w.write_strip(r0, path)
        w.close()

    out: dict[str, Any] = {"strips": [[a, b] for a, b in itertools.pairwise(bounds)]}
    for name, fn in [("before", before), ("after", after)]:
        load = os.getloadavg()[0]
        c0, w0 = cpu(), time.perf_counter()
        fn()
        out[name] = {"cpu_s": cpu() - c0, "wall_s": time.perf_counter() - w0, "load_1min_before": load}
    out["after_equals_whole_scene_raster_bytes"] = _same_bytes(folder / "stitch-after.tif", whole)
    out["before_vs_after"] = same_pixels(folder / "stitch-before.tif", folder / "stitch-after.tif")
    return out


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "gdal": rasterio.__gdal_version__,
        "rasterio": rasterio.__version__,
        "numpy": np.__version__,
        "load_1_5_15min_at_start": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10240, help="scene edge in pixels (10240: 105 MP)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--strips", type=int, default=4)
    parser.add_argument("--strip-size", type=int, default=14336, help="scene edge for the stitch (4 strips of ~50 MP)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cog_finish.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
    scene = Scene(args.size, args.size)
    mp = scene.height * scene.width / 1e6
    result: dict[str, Any] = {
        "machine": machine(),
        "scene": {"height": scene.height, "width": scene.width, "megapixels": mp},
    }
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cog-finish-", dir=args.out.parent) as tmp:
        folder = Path(tmp)
        for threads in (1, None):
            set_gdal_threads(threads)
            label = gdal_threads()
            for i in range(args.repeat):
                order = [("before", run_before), ("gdal_assembly", run_gdal_assembly), ("after", run_after)]
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    out = folder / f"{name}.tif"
                    runs.setdefault(f"{name}@{label}", []).append(fn(scene, out))
                    print(f"{name} GDAL threads {label}: {runs[f'{name}@{label}'][-1]}", flush=True)
            if threads is None:
                result["checks"] = {
                    "before_vs_after": same_pixels(folder / "before.tif", folder / "after.tif"),
                    "before_vs_gdal_assembly": same_pixels(folder / "before.tif", folder / "gdal_assembly.tif"),
                    "after_gdal_validator": gdal_validator(folder / "after.tif"),
                }
        set_gdal_threads(None)
        summary = {}
        for key, rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            summary[key] = {
                "loop_cpu_ms_per_mp": 1e3 * med["loop_cpu_s"] / mp,
                "finish_cpu_ms_per_mp": 1e3 * med["finish_cpu_s"] / mp,
                "total_cpu_ms_per_mp": 1e3 * (med["loop_cpu_s"] + med["finish_cpu_s"]) / mp,
                "finish_wall_s": med["finish_wall_s"],
                "finish_wall_ms_per_mp": 1e3 * med["finish_wall_s"] / mp,
            }
        result["runs"] = runs
        result["median"] = summary
        big = Scene(args.strip_size, args.strip_size // 2 * 2)
        sfolder = folder / "strips"
        sfolder.mkdir()
        result["stitch"] = {"megapixels": big.height * big.width / 1e6, **stitch(sfolder, big, args.strips)}
    result["machine"]["load_1_5_15min_at_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["median"], indent=2), json.dumps(result["stitch"], indent=2), sep="\n")


if __name__ == "__main__":
    main()
