"""Training: data layouts and splits, labeled-window sampling, augmentation, statistics,
losses, optimizer state without pickle, and fit() with best/last bundles, records and resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from affine import Affine
from click.testing import CliRunner

from geopsp.classes import ClassTable
from geopsp.cli.main import cli
from geopsp.config import load_config
from geopsp.config.schema import AugmentConfig, NormalizationConfig, SplitConfig, TrainConfig
from geopsp.errors import CheckpointError, ConfigError, OutputExistsError, TrainingDataWarning
from geopsp.labels import LabelMapping
from geopsp.testing import random_class_map, write_geotiff
from geopsp.train import (
    SegmentationLoss,
    WindowSampler,
    compute_normalization,
    decode_color_mask,
    discover_scenes,
    fit,
    prepare_data,
    resolve_paths,
    split_scenes,
)
from geopsp.train.augment import augment_pair, resize_pair
from geopsp.train.evaluation import tile_starts
from geopsp.train.layouts import DEEPGLOBE_COLORS, Scene
from geopsp.train.loop import dry_run
from geopsp.train.schedule import Schedule
from geopsp.train.split import Region
from geopsp.train.state import optimizer_from_flat, optimizer_to_flat

TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0)
SPECTRA = np.array([[40, 60, 30], [200, 90, 60], [60, 180, 220]], dtype=np.float32)  # class -> band means


def easy_scene(folder, name, *, seed, size=(72, 80), unlabeled=0.3, nodata_rows=0):
    """A 3-band uint8 scene whose classes (ids 1..3) are told apart by their spectra; 0 = unlabeled."""
    h, w = size
    classes = random_class_map(h, w, n_classes=3, seed=seed, blob_scale=10.0)
    rng = np.random.default_rng(seed)
    img = SPECTRA[classes].transpose(2, 0, 1) + rng.normal(0, 8, size=(3, h, w))
    img = np.clip(img, 1, 255).astype("uint8")
    labels = (classes + 1).astype("uint8")
    labels[rng.random((h, w)) < unlabeled] = 0
    if nodata_rows:
        img[:, :nodata_rows] = 0
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    write_geotiff(folder / "images" / name, img, transform=TRANSFORM, nodata=0 if nodata_rows else None)
    write_geotiff(folder / "labels" / name, labels, transform=TRANSFORM, nodata=0)
    return folder / "images" / name


CLASSES_YAML = "classes:\n  - {id: 1, name: dark}\n  - {id: 2, name: red}\n  - {id: 3, name: blue}\n"


@pytest.fixture
def easy_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, date in enumerate(["20220101", "20220201", "20220301"]):
        easy_scene(data, f"scene_{date}.tif", seed=i)
    (tmp_path / "classes.yaml").write_text(CLASSES_YAML)
    return tmp_path


def tiny_config(root, **train):
    base = {
        "data": {
            "layout": "scenes",
            "root": str(root / "data"),
            "images": "images/*.tif",
            "labels": "labels/{name}",
            "ignore_values": [0],
        },
        "classes": str(root / "classes.yaml"),
        "split": {"val_dates": ["20220301"]},
        "sampling": {"window": 64, "batch_size": 2, "windows_per_epoch": 4, "grid": 16},
        "normalization": {"windows": 4},
        "model": {"preset": "fast", "encoder": "resnet18", "encoder_depth": 3, "decoder_channels": 32},
        "epochs": 1,
        "val_tile": 64,
        "threads": 1,
    }
    for key, value in train.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_config(overrides={"train": base}).train


# --------------------------------------------------------------------------- config


def test_train_config_rejects_unknown_keys_with_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        load_config(overrides=["train.sampling.windw=3"])
    with pytest.raises(ConfigError, match="did you mean 'class_field'"):
        load_config(overrides=["train.data.class_feld=x"])
    with pytest.raises(ConfigError, match=r"train\.augment\.scale"):
        load_config(overrides=["train.augment.scale=[2, 1]"])


def test_resolve_paths_relative_to_config_dir(tmp_path):
    cfg = TrainConfig.model_validate({"data": {"root": "../data"}, "classes": "c.yaml", "out": "runs/x"})
    out = resolve_paths(cfg, tmp_path / "configs")
    assert out.data.root == str((tmp_path / "data").resolve())
    assert out.classes == str((tmp_path / "configs" / "c.yaml").resolve())
    assert out.out == str((tmp_path / "configs" / "runs" / "x").resolve())


# --------------------------------------------------------------------------- data and split


def _scenes(ids, dates=None):
    return [Scene(i, None, None, "raster", d) for i, d in zip(ids, dates or [None] * len(ids), strict=True)]  # type: ignore[arg-type]


def test_split_by_date_pattern_fraction_and_holdout():
    scenes = _scenes(["a_20200101", "b_20200201", "c_20200301"], ["20200101", "20200201", "20200301"])
    sizes = [(10, 20)] * 3
    train, val = split_scenes(scenes, sizes, SplitConfig(val_dates=("20200301",)))
    assert [r.scene for r in train] == [0, 1] and [r.scene for r in val] == [2]
    train, val = split_scenes(scenes, sizes, SplitConfig(val=("b_*",)))
    assert [r.scene for r in val] == [1]
    train, val = split_scenes(scenes, sizes, SplitConfig(val_from_date="20200201"))
    assert [r.scene for r in val] == [1, 2]
    train, val = split_scenes(scenes, sizes, SplitConfig(val_fraction=0.3), seed=1)
    assert len(val) == 1 and len(train) == 2 and {r.scene for r in train} | {val[0].scene} == {0, 1, 2}
    train, val = split_scenes(scenes[:1], sizes[:1], SplitConfig(holdout=0.25))
    assert train == [Region(0, 0, 0, 10, 15)] and val == [Region(0, 0, 15, 10, 5)]
    train, val = split_scenes(scenes[:1], sizes[:1], SplitConfig(holdout=0.5, holdout_side="top"))
    assert train == [Region(0, 5, 0, 5, 20)] and val == [Region(0, 0, 0, 5, 20)]
    with pytest.raises(ConfigError, match="no scene is dated"):
        split_scenes(scenes, sizes, SplitConfig(val_dates=("19990101",)))
    with pytest.raises(ConfigError, match="no training"):
        split_scenes(scenes, sizes, SplitConfig(val=("*",)))


def test_prepare_data_scenes_layout(easy_data):
    cfg = resolve_paths(tiny_config(easy_data), None)
    data = prepare_data(cfg)
    assert [s.date for s in data.scenes] == ["20220101", "20220201", "20220301"]
    assert data.describe()["val_scenes"] == ["scene_20220301"]
    assert data.input_dtype == "uint8" and data.bands == (1, 2, 3)
    labels = data.readers[0].labels()
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 255}


def test_missing_labels_and_bad_bands(easy_data):
    (easy_data / "labels" / "x").mkdir(parents=True)
    cfg = resolve_paths(tiny_config(easy_data, data={"labels": "x/{stem}.tif"}), None)
    with pytest.raises(ConfigError, match="no label raster"):
        prepare_data(cfg)
    cfg = resolve_paths(tiny_config(easy_data, data={"bands": [1, 4]}), None)
    with pytest.raises(ConfigError, match="has 3 bands"):
        prepare_data(cfg)
    with pytest.raises(ConfigError, match="no class table"):
        prepare_data(resolve_paths(tiny_config(easy_data, classes=None), None))


def test_nodata_is_ignored_in_labels_and_stats(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    easy_scene(data, "s_20220101.tif", seed=3, nodata_rows=10)
    easy_scene(data, "s_20220201.tif", seed=4)
    (tmp_path / "classes.yaml").write_text(CLASSES_YAML)
    cfg = resolve_paths(tiny_config(tmp_path, split={"val_dates": ["20220201"]}), None)
    data_ = prepare_data(cfg)
    labels = data_.readers[0].labels()
    assert (labels[:10] == 255).all()
    # a scene that does not fit the cache is read window by window, with the same result
    uncached = prepare_data(
        resolve_paths(tiny_config(tmp_path, split={"val_dates": ["20220201"]}, data={"cache_mb": 0}), None)
    )
    assert np.array_equal(uncached.readers[0].labels(), labels)
    img_a, lab_a = data_.readers[0].read(-5, 60, 30, 30)
    img_b, lab_b = uncached.readers[0].read(-5, 60, 30, 30)
    assert np.array_equal(lab_a, lab_b) and np.array_equal(img_a, img_b, equal_nan=True)
    assert np.isnan(img_a[:, :5]).all() and (lab_a[:, 20:] == 255).all()
    norm = compute_normalization(
        data_.readers, data_.train, NormalizationConfig(windows=8), bands=3, window=200, rng=np.random.default_rng(0)
    )
    import rasterio

    with rasterio.open(data / "images" / "s_20220101.tif") as src:
        img = src.read().astype(np.float64)
    valid = img[:, 10:].reshape(3, -1)
    assert norm.offset == pytest.approx(valid.mean(axis=1).tolist(), rel=1e-4)
    assert norm.scale == pytest.approx(valid.std(axis=1).tolist(), rel=1e-3)
    pct = compute_normalization(
        data_.readers,
        data_.train,
        NormalizationConfig(method="percentile", windows=8),
        bands=3,
        window=200,
        rng=np.random.default_rng(0),
    )
    assert pct.offset == pytest.approx(np.percentile(valid, 2, axis=1).tolist(), rel=0.05)
    assert pct.clip is not None


def test_sampler_favours_labeled_windows(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    easy_scene(data, "s_20220101.tif", seed=5, size=(128, 128), unlabeled=0.0)
    import rasterio

    lab_path = data / "labels" / "s_20220101.tif"
    with rasterio.open(lab_path) as src:
        lab = src.read(1)
    lab[:, 32:] = 0  # only the left quarter is labeled
    write_geotiff(lab_path, lab, transform=TRANSFORM, nodata=0)
    (tmp_path / "classes.yaml").write_text(CLASSES_YAML)
    cfg = resolve_paths(tiny_config(tmp_path, split={"holdout": 0.0, "val_dates": []}), None)
    data_ = prepare_data(cfg)
    sampler = WindowSampler(data_.readers, data_.train, window=32, grid=16, min_labeled=0.5, power=1.0, uniform=0.0)
    draws = sampler.sample(200, np.random.default_rng(0))
    assert all(d.col < 32 for d in draws)  # windows start where most of them is labeled
    assert all(0 <= d.row <= 128 - 32 for d in draws)
    assert sampler.labeled_fraction == pytest.approx(0.25, abs=0.02)


def test_holdout_windows_never_see_validation_pixels(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    easy_scene(data, "s_20220101.tif", seed=6, size=(64, 64), unlabeled=0.0)
    (tmp_path / "classes.yaml").write_text(CLASSES_YAML)
    cfg = resolve_paths(tiny_config(tmp_path, split={"val_dates": [], "holdout": 0.5}), None)
    data_ = prepare_data(cfg)
    from geopsp.train.sampling import read_region_window

    reg = data_.train[0]
    assert reg == Region(0, 0, 0, 64, 32)
    img, lab = read_region_window(data_.readers[0], reg, 0, 0, 64)  # a window wider than the region
    assert np.isnan(img[:, :, 32:]).all() and (lab[:, 32:] == 255).all()
    assert np.isfinite(img[:, :, :32]).all()


def test_deepglobe_colours_and_layout(tmp_path):
    from PIL import Image

    mask = np.zeros((3, 4, 3), dtype=np.uint8)
    mask[0] = [[0, 255, 255], [255, 255, 0], [255, 0, 255], [0, 255, 0]]
    mask[1] = [[0, 0, 255], [255, 255, 255], [0, 0, 0], [250, 5, 3]]  # red is no DeepGlobe colour
    mask[2] = [[10, 240, 250], [130, 127, 129], [0, 0, 0], [0, 0, 0]]  # JPEG-ish noise still decodes
    unknown: set[str] = set()
    values = decode_color_mask(mask, DEEPGLOBE_COLORS, unknown=unknown)
    assert values.tolist() == [[0, 1, 2, 3], [4, 5, 65535, 65535], [0, 2, 65535, 65535]]
    assert unknown == {"255,0,0"}
    folder = tmp_path / "dg"
    folder.mkdir()
    for i in (11, 22):
        Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(folder / f"{i}_sat.jpg")
        Image.fromarray(np.tile(mask[:1, :1], (40, 40, 1))).save(folder / f"{i}_mask.png")
    cfg = load_config(
        overrides={"train": {"data": {"layout": "deepglobe", "root": str(folder)}, "split": {"val": ["22"]}}}
    ).train
    scenes = discover_scenes(cfg.data, cfg.split)
    assert [s.id for s in scenes] == ["11", "22"]
    data_ = prepare_data(cfg)
    assert data_.classes.names == ["urban", "agriculture", "rangeland", "forest", "water", "barren"]
    assert (data_.readers[0].labels() == 0).all()  # cyan = urban = channel 0


def test_spacenet_chips_matched_by_id(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    folder = tmp_path / "sn"
    folder.mkdir()
    for chip in ("img1", "img2"):
        write_geotiff(
            folder / f"RGB-PanSharpen_AOI_2_Vegas_{chip}.tif", np.full((3, 40, 40), 50, np.uint8), transform=TRANSFORM
        )
        gdf = gpd.GeoDataFrame(geometry=[box(500050, 5599850, 500150, 5599950)], crs="EPSG:32633")
        gdf.to_crs("EPSG:4326").to_file(folder / f"buildings_AOI_2_Vegas_{chip}.geojson")
    cfg = load_config(
        overrides={
            "train": {
                "data": {"layout": "spacenet", "root": str(folder), "images": "*.tif", "vector": "*.geojson"},
                "split": {"val": ["*img2"]},
            }
        }
    ).train
    data_ = prepare_data(cfg)
    assert [s.labels.name for s in data_.scenes] == [
        "buildings_AOI_2_Vegas_img1.geojson",
        "buildings_AOI_2_Vegas_img2.geojson",
    ]
    lab = data_.readers[0].labels()
    assert data_.classes.names == ["background", "building"]
    assert lab[5:15, 5:15].min() == 1 and lab[20:, 20:].max() == 0 and lab.sum() == 100


# --------------------------------------------------------------------------- augmentation and losses


def test_augment_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5, size=(16, 16))
    img = np.stack([lab.astype(np.float32), lab.astype(np.float32) * 2])
    cfg = AugmentConfig(brightness=0.0, contrast=0.0)
    for _ in range(20):
        a, b = augment_pair(img, lab, cfg, rng)
        assert np.array_equal(a[0], b.astype(np.float32)) and np.array_equal(a[1], 2 * a[0])
    big_img, big_lab = resize_pair(img, lab, 32)
    assert big_img.shape == (2, 32, 32) and big_lab.shape == (32, 32)
    assert set(np.unique(big_lab).tolist()) <= set(np.unique(lab).tolist())  # nearest: no new classes
    assert np.array_equal(big_lab[::2, ::2], lab)


@pytest.mark.parametrize("kind", ["ce", "dice", "focal", "ce+dice"])
def test_losses_ignore_pixels_and_aux(kind):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = 255
    loss_fn = SegmentationLoss(kind, ignore_index=255, aux_weight=0.4)
    total, main = loss_fn(logits, target)
    total.backward()
    assert torch.isfinite(total) and total == main
    assert logits.grad is not None and (logits.grad[:, :, :4] == 0).all()  # ignored pixels get no gradient
    aux = torch.randn(2, 3, 8, 8)
    total2, main2 = loss_fn((logits.detach(), aux), target)
    assert total2 == pytest.approx(float(main2 + 0.4 * loss_fn.single(aux, target)), rel=1e-5)
    all_ignored = torch.full((2, 8, 8), 255)
    assert float(loss_fn(logits.detach(), all_ignored)[0]) == 0.0
    # without labeled pixels the loss is 0 with a zero gradient, not NaN (no host-side `if` decides it)
    logits.grad = None
    loss_fn(logits, all_ignored)[0].backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_optimizer_state_round_trip_without_pickle(tmp_path):
    from geopsp.train.state import load_training_state, save_training_state

    model = torch.nn.Linear(3, 2)
    for opt in (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        torch.optim.AdamW(model.parameters(), lr=0.01),
    ):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        tensors, scalars = optimizer_to_flat(opt.state_dict())
        json.dumps(scalars)
        rebuilt = optimizer_from_flat(tensors, json.loads(json.dumps(scalars)))
        opt.load_state_dict(rebuilt)
        save_training_state(tmp_path, optimizer=opt, info={"epoch": 3})
        info, state = load_training_state(tmp_path)
        assert info["epoch"] == 3 and isinstance(info["torch_rng"], torch.Tensor)
        opt.load_state_dict(state)
    with pytest.raises(CheckpointError, match="no training state"):
        load_training_state(tmp_path / "nothing")


def test_poly_schedule_and_tiles():
    cfg = TrainConfig()
    assert Schedule.of(cfg, 100).lr(0, 0.0) == pytest.approx(0.01)
    assert Schedule.of(cfg, 100).lr(50, 0.0) == pytest.approx(0.01 * 0.5**0.9)
    budget = TrainConfig(max_minutes=1.0)
    assert Schedule.of(budget, 100).lr(0, 45.0) == pytest.approx(0.01 * 0.25**0.9)  # time runs out first
    guard = TrainConfig(max_minutes=1.0, budget="guard")
    assert Schedule.of(guard, 100).lr(0, 45.0) == pytest.approx(0.01)  # a guard never bends the schedule
    tiles = tile_starts(10, 4)
    assert tiles == [(0, 0, 4), (4, 4, 8), (6, 8, 10)]
    assert sum(e - s for _, s, e in tiles) == 10


# --------------------------------------------------------------------------- fit


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


class Interrupt(Exception):
    pass


def test_fit_writes_outputs_and_resume_continues(easy_data):
    # fp32 pinned: amp "auto" picks bf16 or fp32 by timing a step on this CPU, so two fresh runs may
    # train in different precisions; the determinism checked here is that of one precision
    out = easy_data / "run"
    events = []

    def stop_after_first_epoch(event):
        events.append(event)
        if event.phase == "epoch" and event.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(tiny_config(easy_data, amp=False, epochs=2), out, progress=stop_after_first_epoch)
    for name in (
        "best.safetensors",
        "last.safetensors",
        "last_state.json",
        "last_state.safetensors",
        "metrics.csv",
        "curves.png",
        "config.yaml",
    ):
        assert (out / name).stat().st_size > 0, name
    assert {e.phase for e in events} == {"train", "val", "epoch"}
    from geopsp.model.bundle import load_bundle

    meta = load_bundle(out / "best.safetensors").meta
    assert meta.classes.names == ["dark", "red", "blue"] and meta.classes.ids == [1, 2, 3]
    assert meta.input_dtype == "uint8" and meta.bands == (1, 2, 3)
    assert meta.normalization.method == "meanstd" and meta.pixel_size == 10.0
    assert meta.provenance["epochs"] == 1 and meta.provenance["data"]["val_scenes"] == ["scene_20220301"]
    assert set(meta.provenance["metrics"]["val_iou"]) == {"dark", "red", "blue"}
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 1 and rows[0]["epoch"] == "1" and rows[0]["val_miou"] != ""
    assert {"iou_dark", "iou_red", "iou_blue", "val_oa", "train_loss", "val_loss"} <= set(rows[0])
    resolved = load_config(out / "config.yaml")
    assert resolved.train.data.root == str(easy_data / "data")

    with pytest.raises(OutputExistsError, match="--resume"):
        fit(tiny_config(easy_data, amp=False, epochs=2), out)

    # resume: epoch 2 follows, epoch 1's record is kept
    res = fit(tiny_config(easy_data, amp=False, epochs=2), out, resume=True)
    assert res.epochs_run == 1
    rows2 = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows2] == ["1", "2"] and rows2[0] == rows[0]
    assert load_bundle(out / "last.safetensors").meta.provenance["epochs"] == 2

    # the interrupted and resumed run equals an uninterrupted one (deterministic with the seed)
    straight = fit(tiny_config(easy_data, amp=False, epochs=2), easy_data / "straight")
    a, b = _weights(out / "last.safetensors"), _weights(straight.last)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(straight.metrics_csv)[1]["train_loss"] == rows2[1]["train_loss"]

    with pytest.raises(CheckpointError, match="already finished"):
        fit(tiny_config(easy_data, amp=False, epochs=2), out, resume=True)
    # raising the epoch count continues the run
    res = fit(tiny_config(easy_data, amp=False, epochs=3), out, resume=True)
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3"]


def test_training_loss_goes_down_on_easy_data(easy_data):
    from geopsp.model.registry import build_model
    from geopsp.train.batches import make_batch
    from geopsp.train.loop import build_spec

    cfg = tiny_config(easy_data, augment={"scale": [1.0, 1.0]})
    data_ = prepare_data(resolve_paths(cfg, None))
    norm = compute_normalization(
        data_.readers, data_.train, cfg.normalization, bands=3, window=64, rng=np.random.default_rng(0)
    )
    sampler = WindowSampler(data_.readers, data_.train, window=64, grid=16)
    x, y = make_batch(data_, sampler, data_.train, cfg.augment, norm, np.random.default_rng(0), 4, 64)
    torch.manual_seed(0)
    model = build_model(build_spec(cfg, in_channels=3, num_classes=3))
    model.train()
    loss_fn = SegmentationLoss("ce", ignore_index=255)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        total, _ = loss_fn(model(x), y)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_dry_run_writes_nothing(easy_data):
    before = sorted(p.name for p in easy_data.rglob("*"))
    summary = dry_run(tiny_config(easy_data))
    assert summary["train_scenes"] == ["scene_20220101", "scene_20220201"]
    assert summary["spec"]["encoder"] == "resnet18" and summary["loss"] > 0
    assert sorted(p.name for p in easy_data.rglob("*")) == before


def test_dry_run_builds_the_loss_fit_builds(easy_data):
    # Class weights are checked against the classes, as fit checks them.
    with pytest.raises(ConfigError, match="2 class weights for 3 classes"):
        dry_run(tiny_config(easy_data, optim={"class_weights": [1.0, 2.0]}))
    # Label smoothing and class weights reach the loss the dry run computes.
    plain = dry_run(tiny_config(easy_data))["loss"]
    smoothed = dry_run(tiny_config(easy_data, optim={"label_smoothing": 0.5}))["loss"]
    weighted = dry_run(tiny_config(easy_data, optim={"class_weights": [1.0, 5.0, 0.1]}))["loss"]
    assert smoothed != pytest.approx(plain)
    assert weighted != pytest.approx(plain)
    assert dry_run(tiny_config(easy_data, optim={"class_weights": "balanced"}))["loss"] > 0


def test_cli_train_and_dry_run(easy_data):
    cfg = easy_data / "train.yaml"
    cfg.write_text(
        "train:\n"
        "  data: {layout: scenes, root: data, images: 'images/*.tif', labels: 'labels/{name}', ignore_values: [0]}\n"
        "  classes: classes.yaml\n"
        "  split: {val_dates: ['20220301']}\n"
        "  sampling: {window: 64, batch_size: 2, windows_per_epoch: 2, grid: 16}\n"
        "  normalization: {windows: 2}\n"
        "  model: {preset: fast, encoder: resnet18, decoder_channels: 16}\n"
        "  epochs: 1\n"
        "  val_tile: 64\n"
    )
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--config", str(cfg), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dry_run"] is True
    assert not (easy_data / "runs").exists()
    out = easy_data / "cli-run"
    res = runner.invoke(cli, ["train", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["best"] == str(out / "best.safetensors") and "iou" in summary["val"]
    res = runner.invoke(cli, ["train", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert isinstance(res.exception, OutputExistsError) and "--resume" in str(res.exception)
    res = runner.invoke(
        cli, ["train", "--config", str(cfg), "--out", str(out), "--set", "train.epochs=2", "--resume", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs_run"] == 1
    res = runner.invoke(cli, ["train", "--config", str(cfg), "--set", "train.sampling.windw=3"])
    assert isinstance(res.exception, ConfigError) and "did you mean 'window'" in str(res.exception)


def test_label_mapping_unknown_values_warn_during_training(tmp_path):
    from geopsp.labels import UnknownLabelWarning

    data = tmp_path / "data"
    data.mkdir()
    easy_scene(data, "s_20220101.tif", seed=1)
    easy_scene(data, "s_20220201.tif", seed=2)
    (tmp_path / "classes.yaml").write_text("classes:\n  - {id: 1, name: dark}\n  - {id: 2, name: red}\n")
    cfg = resolve_paths(tiny_config(tmp_path, split={"val_dates": ["20220201"]}), None)
    data_ = prepare_data(cfg)
    data_.readers[0].labels()
    with pytest.warns(UnknownLabelWarning, match=r"label values 3 are not in the class table \[1, 2\]"):
        data_.warn_unknown()
    assert isinstance(data_.mapping, LabelMapping) and isinstance(data_.classes, ClassTable)


def test_quick_config_on_a_synthetic_scene(tmp_path):
    from geopsp.model.bundle import read_bundle_meta
    from geopsp.synthetic import SYNTHETIC_CLASSES, make_scene
    from geopsp.train import quick_config

    scene, labels = make_scene(tmp_path / "scene.tif", width=97, height=131, bands=4, dtype="uint16", seed=2)
    cfg = quick_config(
        scene,
        labels,
        classes=SYNTHETIC_CLASSES,
        epochs=1,
        windows_per_epoch=2,
        batch_size=2,
        model={"decoder_channels": 16},
        threads=1,
    )
    # this small scene has no water and no grassland: the run says so, once per class
    with pytest.warns(TrainingDataWarning) as record:
        res = fit(cfg, tmp_path / "run")
    missing = {str(w.message).split("'")[1] for w in record if "has no training pixels" in str(w.message)}
    assert missing == {"water", "grassland"}
    meta = read_bundle_meta(res.best)
    assert meta.classes == SYNTHETIC_CLASSES and meta.input_dtype == "uint16" and len(meta.bands) == 4
    assert meta.provenance["data"]["train_scenes"] == ["scene"] == meta.provenance["data"]["val_scenes"]


def test_train_band_names_option_names_the_bands_in_the_bundle(easy_data, tmp_path):
    import json

    import yaml

    from geopsp.testing import run_cli

    conf = tiny_config(easy_data).model_dump(mode="json", exclude_none=True)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"train": conf}))
    bands = len(dry_run(tiny_config(easy_data))["bands"])
    names = ",".join(f"b{i}" for i in range(bands))
    code, out, err = run_cli("train", "--config", tmp_path / "c.yaml", "--dry-run", "--band-names", names)
    assert code == 0, err
    assert json.loads(out)["band_names"] == names.split(",")
    code, _, err = run_cli("train", "--config", tmp_path / "c.yaml", "--dry-run", "--band-names", "x")
    assert code == 1 and "1 band names for" in err, err
