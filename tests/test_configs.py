"""Every example config in configs/ validates, and dry-runs (data resolved, split and statistics
on a tiny subsample, model built, one forward/backward pass, nothing written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geopsp.classes import ClassTable
from geopsp.config import load_config
from geopsp.train.loop import dry_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHARED_DATA_CONFIGS = ["sentinel2_lulc.yaml", "aerial_landuse.yaml", "spacenet_buildings.yaml"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_validates(path):
    cfg = load_config(path)
    if isinstance(cfg.train.classes, str):
        ClassTable.from_file(path.parent / cfg.train.classes)


@pytest.mark.parametrize("path", sorted((CONFIGS / "classes").glob("*.yaml")), ids=lambda p: p.name)
def test_class_tables_load(path):
    table = ClassTable.from_file(path)
    assert len(table) >= 2


@pytest.mark.data
@pytest.mark.parametrize("name", SHARED_DATA_CONFIGS)
def test_config_dry_run_on_shared_data(name, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = CONFIGS / name
    cfg = load_config(path, overrides=["train.threads=1"])
    summary = dry_run(cfg, base_dir=path.parent)
    assert summary["train_scenes"] and summary["val_scenes"]
    assert np.isfinite(summary["loss"])
    assert len(summary["normalization"]["offset"]) == len(summary["bands"])
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_sentinel2_config_is_machine_independent_and_validates_every_date():
    cfg = load_config(CONFIGS / "sentinel2_lulc.yaml").train
    # every date trains; validation is stratified blocks of each date, not a held-back date
    assert cfg.split.val_dates == () and cfg.split.val_blocks > 0 and cfg.split.block_layout == "per_scene"
    # a fixed epoch count decides the result; the time cap is only a guard
    assert cfg.budget == "guard" and cfg.max_minutes is not None and cfg.select == "ema"
    assert cfg.data.ignore_values == (0.0,)
    table = ClassTable.from_file(CONFIGS / cfg.classes)  # type: ignore[operator]
    assert table.ids == [1, 2, 3, 4, 5, 7, 8, 9, 10]  # 6 (permanent grassland) is labeled on no date


def test_deepglobe_config_dry_run_on_synthetic_layout(tmp_path):
    from PIL import Image

    cfg = load_config(CONFIGS / "deepglobe_landcover.yaml")
    colors = [c.color for c in cfg.train.data.color_map or ()]
    assert len(colors) == 7 and (0, 0, 0) in colors
    folder = tmp_path / "deepglobe"
    folder.mkdir()
    rng = np.random.default_rng(0)
    palette = np.array(colors, dtype=np.uint8)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)).save(folder / f"{100 + i}_sat.jpg")
        mask = palette[rng.integers(0, 7, size=(8, 8))].repeat(8, axis=0).repeat(8, axis=1)
        Image.fromarray(mask).save(folder / f"{100 + i}_mask.png")
    cfg = load_config(
        CONFIGS / "deepglobe_landcover.yaml",
        overrides=[f"train.data.root={folder}", "train.threads=1"],
    )
    summary = dry_run(cfg, base_dir=CONFIGS)
    assert len(summary["train_scenes"]) == 9 and len(summary["val_scenes"]) == 1
    assert summary["classes"] == ["urban", "agriculture", "rangeland", "forest", "water", "barren"]
    assert 0.5 < summary["labeled_fraction"] < 1.0  # black = unknown is ignored
