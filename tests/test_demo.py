"""The quick start end to end, shrunk: every stage runs for real on tiny synthetic scenes."""

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geopsp.demo import run_demo
from geopsp.errors import TrainingDataWarning


def test_demo_runs_the_whole_job(tmp_path: Path) -> None:
    steps: list[str] = []
    # 192-px scenes lack classes (the default 768 px has every class): the run says so
    with pytest.warns(TrainingDataWarning) as record:
        res = run_demo(tmp_path / "demo", train_minutes=0.1, train_size=192, predict_size=300, step=steps.append)
    assert any("'water' has no training pixels" in str(w.message) for w in record)
    assert len(steps) == 6  # generate, train, export, predict, vectorize, score
    for p in (
        res.bundle,
        res.onnx_model,
        res.onnx_model.with_suffix(".json"),
        res.class_raster,
        res.qml,
        res.probability,
        *res.qa.values(),
        res.polygons,
        res.preview,
        res.report,
        res.train_curves,
    ):
        assert p is not None and Path(p).is_file(), p
    with rasterio.open(res.scene) as scene, rasterio.open(res.class_raster) as cls:
        assert cls.crs == scene.crs and cls.transform == scene.transform
        assert (cls.width, cls.height) == (scene.width, scene.height)
        pred = cls.read(1)
        invalid = scene.read_masks(1) == 0
        assert invalid.any(), "the predicted scene has a nodata collar"
        assert np.all(pred[invalid] == cls.nodata)
        assert np.all(pred[~invalid] != cls.nodata)
        assert cls.colormap(1)  # embedded colour table
    with sqlite3.connect(res.polygons) as con:
        (n_styles,) = con.execute("select count(*) from layer_styles").fetchone()
    assert n_styles >= 1
    report = json.loads(Path(res.report).read_text())
    assert report
    for key in ("overall_accuracy", "miou", "mean_f1"):
        assert 0.0 <= res.scores[key] <= 1.0
    # the run is refused a second time without overwrite, and nothing is lost
    before = Path(res.class_raster).stat().st_mtime_ns
    try:
        run_demo(tmp_path / "demo", train_minutes=0.1, train_size=192, predict_size=300)
    except FileExistsError:
        pass
    else:  # pragma: no cover - would be a bug
        raise AssertionError("second run without overwrite should refuse")
    assert Path(res.class_raster).stat().st_mtime_ns == before
