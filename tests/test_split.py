"""Stratified validation blocks (train.split.val_blocks), Region.exclude, and the training-data warnings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from affine import Affine
from test_train import tiny_config

from geopsp.config import load_config
from geopsp.errors import ConfigError, TrainingDataWarning
from geopsp.testing import random_class_map, write_geotiff
from geopsp.train.checks import MIN_VAL_PIXELS, check_training_data, class_pixel_counts
from geopsp.train.datasets import prepare_data, resolve_paths
from geopsp.train.sampling import WindowSampler, read_region_window
from geopsp.train.split import Region, split_blocks

TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0)
SIZE = (97, 131)
CLASSES = "classes:\n" + "".join(f"  - {{id: {i}, name: c{i}}}\n" for i in (1, 2, 3, 4))
DATES = ("20220101", "20220201", "20220301")


def class_map(seed, *, rare=True):
    """Labels 1..3 in blobs, 0 (unlabeled) on a third, and a rare class 4 in one small patch."""
    h, w = SIZE
    labels = (random_class_map(h, w, n_classes=3, seed=seed, blob_scale=12.0) + 1).astype("uint8")
    labels[np.random.default_rng(seed).random((h, w)) < 0.3] = 0
    if rare:
        labels[40:52, 60:76] = 4
    return labels


def write_scene(folder, date, labels):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(date))
    image = (rng.random((3, *labels.shape)) * 200 + 20).astype("uint8")
    name = f"scene_{date}.tif"
    write_geotiff(folder / "images" / name, image, transform=TRANSFORM)
    write_geotiff(folder / "labels" / name, labels, transform=TRANSFORM, nodata=0)


@pytest.fixture
def stack(tmp_path):
    """Three dates of one area, every class present (class 4 rare)."""
    for i, date in enumerate(DATES):
        write_scene(tmp_path / "data", date, class_map(i))
    (tmp_path / "classes.yaml").write_text(CLASSES)
    return tmp_path


def config(root, *, classes=CLASSES, **split):
    (root / "classes.yaml").write_text(classes)
    blocks = {"val_dates": [], "val_blocks": 0.2, "block_size": 16, **split}
    return resolve_paths(tiny_config(root, split=blocks, sampling={"window": 32, "grid": 8}), None)


def block_rects(val, scene):
    return {(v.row, v.col, v.height, v.width) for v in val if v.scene == scene}


def record(data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = check_training_data(data)
    assert all(w.category is TrainingDataWarning for w in caught)
    assert [str(w.message) for w in caught] == list(report.warnings)
    return report


# --------------------------------------------------------------------------- Region.exclude


def test_mask_excluded_clips_to_padded_windows():
    reg = Region(0, 0, 0, 10, 10, exclude=((2, 2, 4, 4), (8, 8, 5, 5)))
    lab = np.zeros((6, 6), dtype="uint8")
    reg.mask_excluded(lab, row=-2, col=-2, fill=255)  # a padded window: scene rows and cols -2..3
    assert (lab == 255).sum() == 4 and (lab[4:6, 4:6] == 255).all()  # scene rows/cols 2..3 of the first block
    assert reg.pixels == 100 - 16 - 4  # the second rectangle counts only inside the region


def test_config_rejects_two_spatial_holdouts():
    with pytest.raises(ConfigError, match=r"val_blocks .* holdout"):
        load_config(overrides=["train.split.val_blocks=0.2", "train.split.holdout=0.2"])


# --------------------------------------------------------------------------- the block split


def test_blocks_give_every_class_validation_and_training_pixels(stack):
    data = prepare_data(config(stack))
    train = class_pixel_counts(data, data.train)
    val = class_pixel_counts(data, data.val)
    assert (train > 0).all() and (val > 0).all()
    # blocks are cut out of training: every labeled pixel counts once, in one split
    total = sum(int(np.count_nonzero(r.labels() != data.mapping.ignore_index)) for r in data.readers)
    assert int(train.sum() + val.sum()) == total
    share = val / (train + val)
    assert 0.1 < val.sum() / total < 0.3 and (share > 0.05).all()
    # every val region is a block inside its scene, labeled, and excluded from that scene's training region
    for v in data.val:
        assert v.height <= 16 and v.width <= 16
        (t,) = [r for r in data.train if r.scene == v.scene]
        assert (v.row, v.col, v.height, v.width) in t.exclude
    describe = data.describe()
    assert describe["train_pixels"] + describe["val_pixels"] == 3 * SIZE[0] * SIZE[1]


def test_validation_labels_are_never_read_for_training(stack):
    data = prepare_data(config(stack))
    ignore = data.mapping.ignore_index
    rng = np.random.default_rng(0)
    for reg in data.train:
        reader = data.readers[reg.scene]
        held = np.zeros(SIZE, dtype=bool)
        for v in data.val:
            if v.scene == reg.scene:
                held[v.row : v.row + v.height, v.col : v.col + v.width] = True
        assert held.any()
        full = reader.labels()
        # every window of a grid over the scene, offset so that windows also hang over its edges
        for dr, dc in [(0, 0), (-5, 7), *rng.integers(-20, 20, size=(3, 2)).tolist()]:
            for row in range(dr, SIZE[0], 24):
                for col in range(dc, SIZE[1], 24):
                    _, lab = read_region_window(reader, reg, row, col, 32)
                    r0, c0 = max(row, 0), max(col, 0)
                    r1, c1 = min(row + 32, SIZE[0]), min(col + 32, SIZE[1])
                    win = lab[r0 - row : r1 - row, c0 - col : c1 - col]
                    under = held[r0:r1, c0:c1]
                    assert (win[under] == ignore).all()
                    assert (win[~under] == full[r0:r1, c0:c1][~under]).all()
    # the sampler measures labeled fractions without the blocks
    sampler = WindowSampler(data.readers, data.train, window=32, grid=8)
    labeled = sum(int(np.count_nonzero(r.labels() != ignore)) for r in data.readers)
    expected = int(class_pixel_counts(data, data.train).sum()) / (3 * SIZE[0] * SIZE[1])
    assert sampler.labeled_fraction == pytest.approx(expected)
    assert sampler.labeled_fraction * 3 * SIZE[0] * SIZE[1] < labeled


def test_per_scene_blocks_differ_by_date_and_shared_blocks_are_the_same(stack):
    per_scene = prepare_data(config(stack, block_layout="per_scene"))
    blocks = [block_rects(per_scene.val, i) for i in range(3)]
    assert all(blocks) and len({frozenset(b) for b in blocks}) == 3
    # a location held out of every date is never trained on; per_scene keeps that rare
    assert len(blocks[0] & blocks[1] & blocks[2]) < min(len(b) for b in blocks)
    shared = prepare_data(config(stack, block_layout="shared"))
    blocks = [block_rects(shared.val, i) for i in range(3)]
    assert blocks[0] and blocks[0] == blocks[1] == blocks[2]
    assert all(set(r.exclude) == blocks[0] for r in shared.train)
    assert (class_pixel_counts(shared, shared.val) > 0).all()


def test_blocks_are_deterministic_by_seed(stack):
    cfg = config(stack)
    a, b = prepare_data(cfg), prepare_data(cfg)
    assert a.train == b.train and a.val == b.val
    c = prepare_data(cfg.model_copy(update={"seed": 7}))
    assert c.val != a.val


def test_blocks_combine_with_held_out_dates(stack):
    data = prepare_data(config(stack, val_dates=["20220301"]))
    assert Region(2, 0, 0, *SIZE) in data.val
    assert {r.scene for r in data.train} == {0, 1}
    assert block_rects(data.val, 0) and block_rects(data.val, 1)
    assert all(r.exclude for r in data.train)


def test_a_class_in_a_single_block_stays_in_training():
    lab = np.zeros((32, 32), dtype="uint8")
    lab[:, 16:] = 1
    lab[2:6, 2:6] = 2  # class 2 lives in one block only
    _, val = split_blocks(
        [Region(0, 0, 0, 32, 32)], lambda i: lab, fraction=0.5, block_size=16, num_classes=3, ignore_index=255
    )
    assert (0, 0, 16, 16) not in {(v.row, v.col, v.height, v.width) for v in val}
    assert {int(lab[v.row, v.col]) for v in val} == {0, 1}


# --------------------------------------------------------------------------- warnings


def test_clean_data_does_not_warn(stack):
    data = prepare_data(config(stack))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingDataWarning)
        report = check_training_data(data)
    assert report.warnings == ()
    summary = json.loads(json.dumps(report.as_dict()))
    assert summary["class_pixels"]["c4"]["val"] > 0
    assert summary["val_labeled_pixels"] >= MIN_VAL_PIXELS
    assert set(summary["labeled_fraction"]) == {f"scene_{d}" for d in DATES}


def test_warns_of_a_class_without_training_pixels(stack):
    table = CLASSES + "  - {id: 5, name: c5}\n"
    cfg = config(stack, classes=table)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingDataWarning)
        data = prepare_data(cfg)  # preparing never warns by itself
    report = record(data)
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("class 5 'c5' has no training pixels")
    assert report.train_pixels[-1] == 0


def test_warns_of_a_class_absent_from_validation(tmp_path):
    for i, date in enumerate(DATES):
        labels = class_map(i, rare=date != "20220301")  # the held-out date has no class 4
        write_scene(tmp_path / "data", date, labels)
    report = record(prepare_data(config(tmp_path, val_blocks=0.0, val_dates=["20220301"])))
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("class 4 'c4' has no validation pixels")
    assert "train.split.val_blocks" in report.warnings[0]


def test_warns_of_a_tiny_validation_set(tmp_path):
    for i, date in enumerate(DATES):
        labels = class_map(i)
        if date == "20220301":  # labels on 4 % of the held-out scene only, every class among them
            keep = np.zeros(SIZE, dtype=bool)
            keep[30:54, 50:80] = True
            labels[~keep] = 0
            labels[30:34, 50:80] = 1
            labels[34:38, 50:80] = 2
            labels[38:42, 50:80] = 3
        write_scene(tmp_path / "data", date, labels)
    report = record(prepare_data(config(tmp_path, val_blocks=0.0, val_dates=["20220301"])))
    assert sum(report.val_pixels) < MIN_VAL_PIXELS
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith(f"the validation set has only {sum(report.val_pixels)} labeled pixels")


def test_warns_of_a_scene_with_almost_no_labels(stack):
    labels = np.zeros(SIZE, dtype="uint8")
    labels[:8, :10] = 1  # 80 of 12707 pixels: 0.6 %
    write_scene(stack / "data", "20220401", labels)
    report = record(prepare_data(config(stack)))
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("scene scene_20220401: labels cover 0.63% of it")
    assert report.labeled_fraction["scene_20220401"] < 0.01
