"""The Trainer: which weights a run keeps and why, the moving average, the time guard, divergence,
amp, rare-class sampling and validation with context. Real small PSPNets on synthetic GeoTIFFs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train import easy_data, tiny_config  # noqa: F401 - easy_data is a fixture

from geopsp.errors import TrainingDivergedError, TrainingWarning
from geopsp.train import fit, prepare_data, resolve_paths
from geopsp.train.amp import choose_amp
from geopsp.train.ema import WeightAverage
from geopsp.train.sampling import WindowSampler
from geopsp.train.split import Region


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _same(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("select", "source"),
    [("ema", "ema.safetensors"), ("last", "last.safetensors"), ("best", "best.safetensors")],
)
def test_select_keeps_the_named_weights_and_says_why(easy_data, select, source):  # noqa: F811
    out = easy_data / f"run_{select}"
    res = fit(tiny_config(easy_data, epochs=4, select=select, min_epochs=2, amp=False), out)
    assert res.model == out / "model.safetensors" and res.kept == source
    assert _same(res.model, out / source)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["kept"] == source and summary["reason"].startswith(f"train.select={select}")
    assert summary["validation"]["f1"] and summary["data"]["train_labeled_pixels"] > 0
    # no best is declared before min_epochs
    assert res.best_epoch >= 2
    rows = res.history
    assert all("ema_val_miou" in r for r in rows)
    if select == "best":
        scores = [max(r["val_miou"], r["ema_val_miou"]) for r in rows if r["epoch"] >= 2]
        assert res.best_miou == pytest.approx(max(scores))
        assert str(res.best_epoch) in summary["reason"]


def test_ema_is_a_warmed_up_moving_average():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 3))  # moves the batch-norm statistics and its integer counter
    ema.update(model)
    d = min(0.9, 2 / 11)  # warm-up: the first update keeps 2/11 of the old average
    assert torch.allclose(ema.module[0].weight, d * start + (1 - d) * (start + 1.0))
    assert int(ema.module[1].num_batches_tracked) == 1
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module[0].weight, model[0].weight, atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_resume_keeps_the_moving_average_bit_identical(easy_data):  # noqa: F811
    class Interrupt(Exception):
        pass

    def stop(event):
        if event.phase == "epoch" and event.epoch == 1:
            raise Interrupt

    out = easy_data / "interrupted"
    with pytest.raises(Interrupt):
        fit(tiny_config(easy_data, epochs=2, amp=False), out, progress=stop)
    fit(tiny_config(easy_data, epochs=2, amp=False), out, resume=True)
    straight = fit(tiny_config(easy_data, epochs=2, amp=False), easy_data / "straight")
    for name in ("last.safetensors", "ema.safetensors", "model.safetensors"):
        assert _same(out / name, straight.out_dir / name), name


def test_time_guard_warns_and_keeps_the_schedule(easy_data):  # noqa: F811
    cfg = tiny_config(easy_data, epochs=50, max_minutes=1e-4, budget="guard", amp=False)
    with pytest.warns(TrainingWarning, match=r"time cap of .* stopped the run after epoch 1 of 50"):
        res = fit(cfg, easy_data / "guarded")
    assert res.stopped_early and res.epochs_run == 1
    # the guard does not compress the schedule: the learning rate is still near its base
    assert res.history[0]["lr"] > 0.9 * cfg.optim.lr


@pytest.mark.parametrize("log_every", [1, 3])
def test_a_diverging_loss_is_its_own_error(easy_data, log_every):  # noqa: F811
    calls = {"n": 0}

    def poison(module, args, output):
        if type(module).__name__ in {"PSPNet", "PadToMultiple"} and module.training:
            calls["n"] += 1
            if calls["n"] >= 2:
                return output * float("nan")
        return None

    handle = torch.nn.modules.module.register_module_forward_hook(poison)
    try:
        # the second step's loss is NaN; read back with the first (log_every=3), it still names step 2
        with pytest.raises(TrainingDivergedError, match=r"diverged at epoch 1 step 2: the loss is nan; lower"):
            fit(tiny_config(easy_data, epochs=1, amp=False, log_every=log_every), easy_data / "nan")
    finally:
        handle.remove()


def test_amp_obeys_a_setting_and_measures_on_cpu():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    x = torch.randn(2, 3, 32, 32)
    seen = []

    def step(m, opt, amp):
        seen.append(amp)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = m(x).float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def make_opt(m):
        return torch.optim.SGD(m.parameters(), lr=0.1)

    before = [p.detach().clone() for p in model.parameters()]
    assert choose_amp(False, torch.device("cpu"), model=model, make_optimizer=make_opt, step=step).enabled is False
    assert seen == []  # a setting is obeyed without measuring
    plain = choose_amp("auto", torch.device("cpu"), model=model, make_optimizer=make_opt, step=step, native_bf16=False)
    assert plain.enabled is False and "no bf16 instructions" in plain.reason and seen == []
    auto = choose_amp("auto", torch.device("cpu"), model=model, make_optimizer=make_opt, step=step, native_bf16=True)
    assert set(seen) == {False, True} and len(seen) == 6
    assert set(auto.seconds) == {"fp32", "bf16"} and "measured on this CPU" in auto.reason
    assert auto.speedup is not None and auto.enabled == (auto.speedup >= 1.1)
    # the run's own model is untouched by the measurement (copies are trained)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_rare_class_sampling_draws_rare_classes_more_often(tmp_path):
    from test_train import TRANSFORM

    from geopsp.testing import write_geotiff

    h = w = 128
    labels = np.full((h, w), 1, dtype="uint8")
    labels[100:104, 10:40] = 2  # a short "road": 120 of 16384 pixels
    img = np.stack([labels * 50, labels * 20, labels * 10]).astype("uint8") + 5
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
    write_geotiff(data / "images" / "s_20220101.tif", img, transform=TRANSFORM)
    write_geotiff(data / "labels" / "s_20220101.tif", labels, transform=TRANSFORM, nodata=0)
    (tmp_path / "classes.yaml").write_text("classes:\n  - {id: 1, name: field}\n  - {id: 2, name: road}\n")
    cfg = resolve_paths(tiny_config(tmp_path, split={"val_dates": []}), None)
    d = prepare_data(cfg)

    def road_share(rare: float) -> float:
        sampler = WindowSampler(d.readers, d.train, window=32, grid=8, rare=rare)
        draws = sampler.sample(400, np.random.default_rng(0))
        lab = d.readers[0].labels()
        return float(np.mean([(lab[x.row : x.row + 32, x.col : x.col + 32] == 1).any() for x in draws]))

    assert road_share(0.5) > 2 * road_share(0.0) and road_share(0.0) < 0.25


def test_validation_blocks_are_scored_with_their_context(easy_data):  # noqa: F811
    from geopsp.model.registry import build_model
    from geopsp.train.evaluation import evaluate_regions
    from geopsp.train.loop import build_spec
    from geopsp.train.losses import SegmentationLoss
    from geopsp.train.stats import compute_normalization

    cfg = resolve_paths(tiny_config(easy_data), None)
    d = prepare_data(cfg)
    norm = compute_normalization(
        d.readers, d.train, cfg.normalization, bands=3, window=32, rng=np.random.default_rng(0)
    )
    torch.manual_seed(0)
    model = build_model(build_spec(cfg, in_channels=3, num_classes=3))
    loss = SegmentationLoss("ce", ignore_index=255)
    scene = d.val[0].scene
    whole = Region(scene, 0, 0, d.readers[scene].height, d.readers[scene].width)
    blocks = [Region(scene, 8, 8, 16, 16), Region(scene, 40, 48, 16, 16)]
    kw = {"tile": 128, "device": torch.device("cpu")}
    _, cm_whole = evaluate_regions(model, d, [whole], norm, loss, **kw)
    _, cm_blocks = evaluate_regions(model, d, blocks, norm, loss, **kw)
    lab = d.readers[scene].labels()
    labeled = sum(int((lab[b.row : b.row + 16, b.col : b.col + 16] != 255).sum()) for b in blocks)
    assert cm_blocks.total == labeled
    # with the whole scene as context, a block's predictions are the full-scene prediction's
    model.eval()
    from geopsp.train.stats import normalize_window

    img, _ = d.readers[scene].read(0, 0, lab.shape[0], lab.shape[1])
    with torch.inference_mode():
        pred = model(torch.from_numpy(normalize_window(img, norm))[None]).argmax(1)[0].numpy()
    expect = np.zeros_like(cm_blocks.counts)
    for b in blocks:
        ref = lab[b.row : b.row + 16, b.col : b.col + 16]
        p = pred[b.row : b.row + 16, b.col : b.col + 16]
        for r, q in zip(ref[ref != 255].ravel(), p[ref != 255].ravel(), strict=True):
            expect[r, q] += 1
    assert np.array_equal(cm_blocks.counts, expect) and cm_whole.total > cm_blocks.total


def _validation_setup(root):
    from geopsp.model.registry import build_model
    from geopsp.train.loop import build_spec
    from geopsp.train.losses import SegmentationLoss
    from geopsp.train.stats import compute_normalization

    cfg = resolve_paths(tiny_config(root), None)
    d = prepare_data(cfg)
    norm = compute_normalization(
        d.readers, d.train, cfg.normalization, bands=3, window=32, rng=np.random.default_rng(0)
    )
    torch.manual_seed(0)
    model = build_model(build_spec(cfg, in_channels=3, num_classes=3)).to(memory_format=torch.channels_last)
    return d, norm, model, SegmentationLoss("ce", ignore_index=255)


def test_batched_validation_scores_as_one_tile_at_a_time(easy_data):  # noqa: F811
    from geopsp.train.evaluation import evaluate_regions

    d, norm, model, loss = _validation_setup(easy_data)
    # a 72 x 80 scene in 32-px tiles: 3 x 3 tiles, the last row and column shifted back
    kw = {"tile": 32, "device": torch.device("cpu"), "channels_last": True}
    seen: dict[int, list[tuple[int, int]]] = {}
    results = {}
    for size in (1, 2, 4, 9, 64):
        seen[size] = []
        results[size] = evaluate_regions(
            model, d, d.val, norm, loss, batch_size=size, progress=lambda i, n, s=size: seen[s].append((i, n)), **kw
        )
    one_loss, one_cm = results[1]
    assert one_cm.total == int((d.readers[d.val[0].scene].labels() != 255).sum())
    for size, (batch_loss, cm) in results.items():
        # the same confusion matrix, hence the same scores, bit for bit
        assert np.array_equal(cm.counts, one_cm.counts), size
        # batched convolutions round the last bits of the logits otherwise
        assert batch_loss == pytest.approx(one_loss, rel=1e-6), size
        assert seen[size][-1] == (9, 9) and len(seen[size]) == -(-9 // size), size


def test_losses_are_read_every_log_every_steps_and_average_to_the_epoch_loss(easy_data):  # noqa: F811
    def train(log_every):
        events = []
        cfg = tiny_config(easy_data, amp=False, log_every=log_every, sampling={"windows_per_epoch": 14})
        res = fit(cfg, easy_data / f"every{log_every}", progress=events.append)
        return res, [e for e in events if e.phase == "train"]

    each, steps = train(1)
    sparse, reports = train(3)
    losses = [e.loss for e in steps]
    assert [e.step for e in steps] == list(range(1, 8))
    # seven steps, read back at 3, 6 and at the end of the epoch; each report the mean of its steps
    assert [e.step for e in reports] == [3, 6, 7] and all(e.steps == 7 for e in reports)
    assert [e.loss for e in reports] == [sum(losses[:3]) / 3, sum(losses[3:6]) / 3, losses[6]]
    # the epoch's loss is the mean of its steps' losses, however often they are read
    assert each.history[0]["train_loss"] == sparse.history[0]["train_loss"] == sum(losses) / 7
    assert _same(each.last, sparse.last)  # reading less often changes nothing else
    summary = json.loads((sparse.out_dir / "train_summary.json").read_text())
    assert summary["log_every"] == 3 and summary["ranks"] == 1 and summary["val_batch_size"] == 2


def _cuda_or_skip() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


@pytest.mark.gpu
def test_a_cuda_training_step_does_not_wait_for_the_gpu(easy_data):  # noqa: F811
    import warnings

    _cuda_or_skip()
    marks: list[tuple[int, int]] = []
    cfg = tiny_config(easy_data, device="cuda", amp=True, log_every=8, sampling={"windows_per_epoch": 32})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def progress(event):
            if event.phase == "train":
                marks.append((event.step, len(caught)))

        torch.cuda.set_sync_debug_mode("warn")  # every operation that waits for the GPU warns
        try:
            res = fit(cfg, easy_data / "cuda", progress=progress)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert [step for step, _ in marks] == [8, 16]
    # steps 9..16 and the report after step 16: the report's one read of the losses, no more
    waits = marks[1][1] - marks[0][1]
    assert waits <= 2, [str(w.message) for w in caught[marks[0][1] : marks[1][1]]]
    summary = json.loads((res.out_dir / "train_summary.json").read_text())
    assert summary["amp"]["bf16"] and summary["channels_last"] and summary["loader_workers"] >= 1


@pytest.mark.gpu
def test_cuda_training_resumes_and_validates_in_batches(easy_data):  # noqa: F811
    from geopsp.train.evaluation import evaluate_regions

    _cuda_or_skip()
    cfg = tiny_config(easy_data, epochs=2, device="cuda", sampling={"windows_per_epoch": 8})
    out = easy_data / "interrupted"

    class Interrupt(Exception):
        pass

    def stop(event):
        if event.phase == "epoch" and event.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(cfg, out, progress=stop)
    fit(cfg, out, resume=True)
    straight = fit(cfg, easy_data / "straight")
    # cuDNN's kernels do not promise bit-identical results from run to run: close, not equal
    a, b = _weights(out / "last.safetensors"), _weights(straight.last)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=5e-3) for k in a)

    d, norm, model, loss = _validation_setup(easy_data)
    model = model.cuda()
    kw = {"tile": 32, "device": torch.device("cuda"), "channels_last": True}
    _, one = evaluate_regions(model, d, d.val, norm, loss, batch_size=1, **kw)
    _, nine = evaluate_regions(model, d, d.val, norm, loss, batch_size=9, **kw)
    assert one.total == nine.total and np.abs(one.counts - nine.counts).sum() <= 0.002 * one.total


@pytest.mark.gpu
def test_cli_trains_on_one_gpu_with_gpus_1(easy_data, tmp_path):  # noqa: F811
    import yaml

    from geopsp.testing import run_cli

    _cuda_or_skip()
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": tiny_config(easy_data).model_dump(mode="json")}))
    code, out, err = run_cli("train", "--config", cfg, "--out", tmp_path / "run", "--gpus", 1, "--no-progress")
    assert code == 0, err
    assert json.loads(out)["epochs_run"] == 1
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["ranks"] == 1
