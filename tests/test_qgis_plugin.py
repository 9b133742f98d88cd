"""geopsp's Processing provider in a real QGIS (Debian's python3-qgis), installed by ``geopsp qgis install``.

``scripts/qgis_processing_check.py`` runs in ``/usr/bin/python3`` (offscreen): it imports the
installed plugin, runs ``geopsp:segment``, ``geopsp:vectorize`` and ``geopsp:evaluate`` with
``processing.run``, loads the results as the GUI does, fails a run on an existing output,
cancels a run from its first progress report and grabs the algorithm dialog. Skipped with the
reason when that Python cannot import ``qgis.core``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from geopsp.inference.runtime import model_meta
from geopsp.testing import run_cli, small_scene

pytestmark = pytest.mark.qgis

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "qgis_processing_check.py"

SEGMENT_PARAMETERS = [
    "INPUT", "MODEL", "VECTOR", "PROBABILITIES", "QA", "TTA", "TILE_SIZE", "OVERLAP", "RUNTIME", "DEVICE",
    "OVERWRITE", "OUTPUT",
]  # fmt: skip


def _layer(step: dict, name: str) -> dict:
    return next(layer for layer in step["layers"] if layer["name"] == name)


def test_processing_provider_runs_loads_styled_fails_and_cancels(qgis_python, qgis_env, tiny_bundle, tmp_path):
    plugins = tmp_path / "profile" / "python" / "plugins"
    code, out, err = run_cli("qgis", "install", "--plugins-dir", plugins)
    assert code == 0, err
    assert Path(out.strip()) == plugins / "geopsp_processing"
    scene, labels = small_scene(tmp_path, name="small.tif")
    big = small_scene(tmp_path, width=640, height=640, name="big.tif")[0]
    classes = model_meta(tiny_bundle).classes
    expect = tmp_path / "classes.json"
    expect.write_text(json.dumps(classes.to_list()), encoding="utf-8")
    work = tmp_path / "work"
    shot = tmp_path / "dialog.png"
    proc = subprocess.run(
        [str(qgis_python), str(SCRIPT), "--plugins-dir", str(plugins), "--model", str(tiny_bundle),
         "--scene", str(scene), "--labels", str(labels), "--big-scene", str(big), "--expect", str(expect),
         "--work", str(work), "--screenshot", str(shot)],
        capture_output=True, text=True, env=qgis_env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"], json.dumps(report, indent=1)[-4000:]
    assert report["provider"]["id"] == "geopsp"
    assert report["algorithms"] == ["geopsp:evaluate", "geopsp:segment", "geopsp:vectorize"]
    assert report["parameters"]["geopsp:segment"] == SEGMENT_PARAMETERS
    assert {"CLASSES", "VECTOR", "SUMMARY"} <= set(report["outputs"]["geopsp:segment"])
    steps = report["steps"]

    seg = steps["segment"]
    res = seg["results"]
    for key in ("CLASSES", "VECTOR", "PROBABILITY", "MARGIN", "ENTROPY", "DISAGREEMENT", "SUMMARY"):
        assert (tmp_path / res[key]).is_file(), key
    # the folder holds exactly the set its summary lists: complete, nothing else
    summary = json.loads((tmp_path / res["SUMMARY"]).read_text())
    listed = sorted(Path(p).name for p in summary["outputs"].values())
    assert sorted(p.name for p in (tmp_path / res["OUTPUT"]).iterdir()) == listed
    assert seg["progress"] and max(seg["progress"]) == 100.0
    device = summary["device"]["device"]
    assert any(line.startswith(f"geopsp ran on {device}") for line in seg["log"]), seg["log"]
    raster = _layer(seg, Path(res["CLASSES"]).stem)
    assert raster["valid"] and raster["renderer"] == "paletted" and raster["classes_ok"], raster
    for key in ("PROBABILITY", "MARGIN", "ENTROPY", "DISAGREEMENT"):  # QA layers load with their ramps
        qa = _layer(seg, Path(res[key]).stem)
        assert qa["valid"] and qa["renderer"] == "singlebandpseudocolor", qa
    polygons = _layer(seg, Path(res["VECTOR"]).stem)
    assert polygons["valid"] and polygons["renderer"] == "categorizedSymbol", polygons
    assert polygons["attribute"] == "class_id" and polygons["classes_ok"] and polygons["features"] > 0

    vec = steps["vectorize"]
    assert (tmp_path / vec["results"]["OUTPUT"]).is_file()
    [loaded] = vec["layers"]  # named after the file or the output, as Processing's settings say
    assert loaded["renderer"] == "categorizedSymbol" and loaded["classes_ok"], loaded

    ev = steps["evaluate"]["results"]
    scores = json.loads((tmp_path / ev["REPORT"]).read_text())
    assert ev["MIOU"] == scores["miou"] and ev["OVERALL_ACCURACY"] == scores["overall_accuracy"]

    # the failure is geopsp's own one line, as the CLI prints it
    code, _, cli_err = run_cli("predict", scene, "-m", tiny_bundle, "-o", work / "segment", "--vector")
    assert code == 1
    assert steps["exists"]["raised"] == "QgsProcessingException"
    assert f"Error: {steps['exists']['message']}" in cli_err

    cancel = steps["cancel"]
    assert cancel["raised"] == "QgsProcessingException" and cancel["message"].startswith("cancelled"), cancel
    assert 0 < cancel["progress"][0] < 100  # cancelled mid-run
    assert cancel["left"] == [], f"a cancelled run left files: {cancel['left']}"
    assert any(line.startswith("Terminated") for line in cancel["log"]), cancel["log"]

    assert steps["screenshot"]["saved"] and shot.stat().st_size > 10_000
