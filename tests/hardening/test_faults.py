"""Faults: Ctrl-C, SIGTERM and SIGKILL mid-run, a full disk, an unwritable folder, concurrent runs.

Nothing partial is ever left under a final name: a run's outputs are there with their summary,
or none of them is. A rerun completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geopsp.testing import random_class_map, small_scene, write_geotiff

from .conftest import final_outputs, geopsp_cmd, temp_outputs

SIGNALS = {"SIGINT": (signal.SIGINT, 130, "Interrupted"), "SIGTERM": (signal.SIGTERM, 143, "Terminated")}


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x640 scene: ~150 tiles of 64 px run one at a time, seconds of CPU inference even on an idle machine."""
    return small_scene(tmp_path_factory.mktemp("big"), width=640, height=640, name="big.tif")[0]


def _wait(cond: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before it could be interrupted")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the command did not reach its midpoint in time")


def _has_temp(folder: Path) -> Callable[[], bool]:
    return lambda: bool(temp_outputs(folder))


@contextlib.contextmanager
def _started(args: list[object], err: Path) -> Iterator[subprocess.Popen[bytes]]:
    with err.open("wb") as ferr:
        proc = subprocess.Popen(geopsp_cmd(*args), stdout=subprocess.DEVNULL, stderr=ferr)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)


def _complete_set(folder: Path) -> bool:
    """Whether the files under final names in ``folder`` are exactly the set its one summary lists."""
    finals = final_outputs(folder)
    summaries = [n for n in finals if n.endswith("_summary.json")]
    if len(summaries) != 1:
        return False
    listed = json.loads((folder / summaries[0]).read_text())["outputs"].values()
    return sorted(str(Path(p).relative_to(folder)) for p in listed) == finals


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> int:
    # The temporary output exists, so the tile loop is under way; signal at once, so that the
    # run is still mid-way however fast the machine is.
    proc.send_signal(sig)
    return proc.wait(timeout=60)


# ------------------------------------------------------------------------------ signals


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_signal_during_predict(cli, bundle, big_scene, tmp_path, seen, name):
    out = tmp_path / "out"
    err = tmp_path / "stderr.txt"
    args = ["predict", big_scene, "-m", bundle, "-o", out, "--no-progress", "--batch-size", 1]
    with _started(args, err) as proc:
        _wait(_has_temp(out), proc)  # the run is under way: signal it there
        code = _stop(proc, signal.SIGKILL if name == "SIGKILL" else SIGNALS[name][0])
    message = err.read_text().strip()
    # A fast machine may be committing the finished outputs when the signal arrives: then the
    # whole set is in place (the signal is held for the renames). Never a part of it.
    complete = _complete_set(out)
    assert final_outputs(out) == [] or complete, (
        f"a partial output set was left under final names: {final_outputs(out)}"
    )
    left = temp_outputs(out)
    if name == "SIGKILL":
        assert code == -signal.SIGKILL or (code == 0 and complete), message
        if not complete:
            assert left, "a killed run cannot clean up; its temporaries should be there"
        (out / ".geopsp-tmp-unrelated.txt").write_text("not geopsp's to remove")
        seen("SIGKILL during predict", f"killed; no file under a final name; {len(left)} temp file(s) left")
    else:
        assert code == SIGNALS[name][1] or (code == 0 and complete), message
        if code != 0:
            assert message.startswith(SIGNALS[name][2]) and "Traceback" not in message, message
        assert left == [], "temporary files were left behind"
        if not complete:
            seen(f"{name} during predict", f"exit {code}: {message}")
    if name == "SIGINT":
        return  # the reruns after SIGTERM and SIGKILL cover the same path; keep the suite fast
    rerun = cli(*args, *(["--overwrite"] if complete else []))
    assert rerun.code == 0, rerun.err
    if name == "SIGKILL":  # the rerun removes the dead run's temporaries, and only those
        assert temp_outputs(out) == [".geopsp-tmp-unrelated.txt"]
        seen("rerun after SIGKILL", f"exit 0; the {len(left)} temporary file(s) of the killed run are removed")
    with rasterio.open(out / "big_classes.tif") as src:
        assert src.read(1).shape == (640, 640)


# A signal at a fixed point of the commit, sent by the process to itself from a hook.
SIGNAL_AT = """
import os, signal, sys
import geopsp.io.atomic as atomic
import geopsp.inference.summary as summary

stage, sig = sys.argv[1], getattr(signal, sys.argv[2])
if stage == "summary":  # the rasters and polygons are finished; the summary is being made
    real_rss = summary.peak_rss_mb

    def hooked_rss():
        os.kill(os.getpid(), sig)
        return real_rss()

    summary.peak_rss_mb = hooked_rss
else:  # the first file of the set has just been renamed to its final name
    real_rename = atomic.rename_noreplace

    def hooked_rename(src, dst):
        real_rename(src, dst)
        if atomic.TEMP_MARKER not in os.path.basename(dst):  # not a writer's own inner commit
            atomic.rename_noreplace = real_rename
            os.kill(os.getpid(), sig)

    atomic.rename_noreplace = hooked_rename
from geopsp.cli.main import main

main(sys.argv[3:])
"""


@pytest.mark.parametrize(("stage", "name"), [("summary", "SIGINT"), ("renames", "SIGINT"), ("renames", "SIGTERM")])
def test_signal_while_the_outputs_are_committed(bundle, scene, tmp_path, seen, stage, name):
    out = tmp_path / "out"
    args = ["predict", scene, "-m", bundle, "-o", out, "--no-progress", "--vector"]
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_AT, stage, name, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    message = proc.stderr.strip()
    assert proc.returncode == SIGNALS[name][1], message
    assert message.startswith(SIGNALS[name][2]) and "Traceback" not in message, message
    assert temp_outputs(out) == []
    if stage == "summary":  # before the commit: nothing of the run
        assert final_outputs(out) == [], "outputs were left without their summary"
    else:  # during the renames: held until the whole set is in place
        assert _complete_set(out), f"a partial output set was left under final names: {final_outputs(out)}"
        assert f"{scene.stem}_polygons.gpkg" in final_outputs(out)
    seen(f"{name} while the outputs are committed ({stage})", f"exit {proc.returncode}: {message}")


@pytest.fixture(scope="module")
def noisy_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1200x1200 class raster of small blobs: a few seconds to vectorize."""
    arr = random_class_map(1200, 1200, n_classes=6, seed=1, blob_scale=3.0).astype("uint8")
    return write_geotiff(tmp_path_factory.mktemp("noisy") / "noisy.tif", arr)


@pytest.mark.parametrize("name", ["SIGTERM", pytest.param("SIGKILL", marks=pytest.mark.slow)])
def test_signal_during_vectorize(cli, noisy_classes, tmp_path, seen, name):
    out = tmp_path / "out"
    out.mkdir()
    err = tmp_path / "stderr.txt"
    args = ["vectorize", noisy_classes, "-o", out / "noisy.gpkg", "--workers", 1, "--block-rows", 64, "--no-progress"]
    with _started(args, err) as proc:
        _wait(_has_temp(out), proc)
        code = _stop(proc, signal.SIGKILL if name == "SIGKILL" else signal.SIGTERM)
    assert final_outputs(out) == [], "a partial output was left under a final name"
    message = err.read_text().strip()
    if name == "SIGTERM":
        assert code == 143 and message.startswith("Terminated"), message
        assert temp_outputs(out) == []
        seen("SIGTERM during vectorize", f"exit {code}: {message}")
    else:
        seen("SIGKILL during vectorize", f"killed; no file under a final name; {len(temp_outputs(out))} temp(s) left")
    assert cli(*args).code == 0
    import geopandas as gpd

    assert len(gpd.read_file(out / "noisy.gpkg", layer="noisy")) > 100


TRAIN_YAML = """\
train:
  data: {layout: scenes, root: data, images: 'images/*.tif', labels: 'labels/{name}', ignore_values: [255]}
  classes: classes.yaml
  split: {val_fraction: 0.5}
  sampling: {window: 64, batch_size: 2, windows_per_epoch: 6, grid: 16}
  normalization: {windows: 2}
  model: {preset: fast, encoder: resnet18, decoder_channels: 16}
  epochs: 4
  val_tile: 64
  threads: 1
"""


def _train_data(root: Path) -> Path:
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "labels").mkdir(parents=True)
    for seed in (0, 1):
        small_scene(
            root / "data" / "images",
            width=80,
            height=72,
            seed=seed,
            name=f"s{seed}.tif",
            labels_path=root / "data" / "labels" / f"s{seed}.tif",
        )
    names = ["cropland", "forest", "water", "road", "building", "grassland"]
    (root / "classes.yaml").write_text(
        "classes:\n" + "".join(f"  - {{id: {i}, name: {n}}}\n" for i, n in enumerate(names))
    )
    cfg = root / "train.yaml"
    cfg.write_text(TRAIN_YAML)
    return cfg


def test_sigterm_during_training_then_resume(cli, tmp_path, seen):
    cfg = _train_data(tmp_path)
    run = tmp_path / "run"
    err = tmp_path / "stderr.txt"
    args = ["train", "--config", cfg, "--out", run, "--no-progress"]
    with _started(args, err) as proc:
        _wait(lambda: (run / "last_state.json").exists(), proc, timeout=120)
        code = _stop(proc, signal.SIGTERM)
    message = err.read_text().strip()
    assert code == 143 and "Terminated" in message, message
    assert temp_outputs(run) == []
    from geopsp.model.bundle import load_bundle

    done = load_bundle(run / "last.safetensors").meta.provenance["epochs"]
    assert 1 <= done < 4
    seen("SIGTERM during train", f"exit {code}: {message.splitlines()[-1]}")
    res = cli(*args[:-1], "--resume", "--no-progress")
    assert res.code == 0, res.err
    assert load_bundle(run / "last.safetensors").meta.provenance["epochs"] == 4
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_sigterm_during_batch_then_rerun(cli, bundle, big_scene, tmp_path, seen):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(3):
        os.link(big_scene, scenes / f"s{i}.tif")
    out = tmp_path / "out"
    err = tmp_path / "stderr.txt"
    args = ["batch", scenes, "--model", bundle, "--out", out, "--workers", 1, "--set", "predict.batch_size=1"]
    with _started(args, err) as proc:
        _wait(_has_temp(out), proc, timeout=180)
        code = _stop(proc, signal.SIGTERM)
    message = err.read_text().strip()
    assert code == 143, message
    for name in final_outputs(out):
        if name.endswith(".tif"):
            with rasterio.open(out / name) as src:
                src.read(1)
    seen("SIGTERM during batch", f"exit {code}: {message.splitlines()[-1]}")
    res = cli(*args)
    assert res.code == 0, res.err
    assert sorted(n for n in final_outputs(out) if n.endswith("_classes.tif")) == [
        f"s{i}_classes.tif" for i in range(3)
    ]
    assert temp_outputs(out) == []


# ------------------------------------------------------------------------------ disk and permissions


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path, leave: int) -> None:
    with (folder / "filler").open("wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    size = (folder / "filler").stat().st_size
    os.truncate(folder / "filler", max(0, size - leave))


def test_disk_full_while_writing(cli, bundle, scene, tmp_path, seen):
    with _tmpfs(tmp_path / "small", "size=2m") as disk:
        _fill(disk, leave=8192)
        res = cli("predict", scene, "-m", bundle, "-o", disk / "out", "--no-progress")
        assert res.code == 1, res.err
        line = res.err.strip()
        assert "\n" not in line and "disk full" in line and scene.stem in line, line
        assert final_outputs(disk / "out") == [] and temp_outputs(disk / "out") == []
        seen("disk full while writing (2 MiB tmpfs)", line)


def test_output_folder_read_only(cli, bundle, scene, tmp_path, seen):
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        res = cli("predict", scene, "-m", bundle, "-o", disk / "out", "--no-progress")
        assert res.code == 1, res.err
        line = res.err.strip()
        assert "\n" not in line and str(disk) in line and "writable" in line, line
        seen("output folder on a read-only filesystem", line)
        res = cli("predict", scene, "-m", bundle, "-o", disk, "--no-progress")
        assert res.code == 1 and "not writable" in res.err, res.err
        seen("output folder exists but is read-only", res.err.strip())


def test_output_folder_not_writable_for_the_user(bundle, scene, seen):
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    base = Path(tempfile.mkdtemp(prefix="geopsp-nobody-"))
    try:
        base.chmod(0o755)
        shutil.copy(scene, base / "scene.tif")
        shutil.copy(bundle, base / "model.safetensors")
        for p in base.iterdir():
            p.chmod(0o644)
        out = base / "locked"
        out.mkdir(mode=0o755)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        env = {**os.environ, "HOME": str(base)}
        probe = subprocess.run(
            [*as_nobody, *geopsp_cmd("--help")], capture_output=True, text=True, check=False, env=env
        )
        if probe.returncode != 0:  # e.g. a checkout in a private (0700) folder, as mktemp -d makes
            pytest.skip(f"nobody cannot switch user or read this checkout: {probe.stderr.strip()[-200:]}")
        args = geopsp_cmd("predict", base / "scene.tif", "-m", base / "model.safetensors", "-o", out, "--no-progress")
        proc = subprocess.run([*as_nobody, *args], capture_output=True, text=True, check=False, timeout=120, env=env)
        assert proc.returncode == 1, proc.stderr
        line = proc.stderr.strip()
        assert "\n" not in line and "not writable" in line and str(out) in line, line
        assert final_outputs(out) == []
        seen("output folder not writable for the user (run as nobody)", line.replace(str(base), "<tmp>"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------ concurrency


def _procs(cmds: list[list[object]]) -> list[subprocess.CompletedProcess[str]]:
    running = [
        subprocess.Popen(geopsp_cmd(*c), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds
    ]
    done = []
    for p in running:
        out, err = p.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _read_ok(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_concurrent_runs_into_one_folder(bundle, scene, tmp_path, seen):
    other = small_scene(tmp_path, width=97, height=131, seed=3, name="other.tif")[0]
    out = tmp_path / "out"
    a, b, c = _procs([["predict", s, "-m", bundle, "-o", out, "--no-progress"] for s in (scene, other, scene)])
    assert b.returncode == 0, b.stderr
    assert _read_ok(out / "other_classes.tif").shape == (131, 97)
    # the same scene twice: one wins, the other reports the clash (or both write identical files)
    assert sorted([a.returncode, c.returncode]) in ([0, 0], [0, 1]), a.stderr + c.stderr
    loser = [r.stderr.strip() for r in (a, c) if r.returncode == 1]
    if loser:
        assert "\n" not in loser[0] and ("exists" in loser[0] or "another process" in loser[0]), loser[0]
    assert _read_ok(out / f"{scene.stem}_classes.tif").shape == (131, 97)
    assert temp_outputs(out) == []
    seen(
        "two predicts of the same scene into one folder at once", loser[0] if loser else "both exit 0, identical files"
    )
    seen("a predict of another scene into that folder at the same time", "exit 0; its outputs valid")


def test_remove_stale_temps_only_touches_dead_local_writers(tmp_path):
    from geopsp.io.atomic import _HOST, remove_stale_temps, temp_prefix

    dead = subprocess.Popen(["true"])
    dead.wait()
    final = tmp_path / "x_classes.tif"
    names = {
        "dead": f".geopsp-tmp-{_HOST}-{dead.pid}-0123abcd-x_classes.tif",
        "dead_aux": f".geopsp-tmp-{_HOST}-{dead.pid}-0123abcd-x_classes.tif.aux.xml",
        "mine": f"{temp_prefix()}x_classes.tif",
        "live": f".geopsp-tmp-{_HOST}-1-0123abcd-x_classes.tif",  # pid 1 always runs
        "other_host": f".geopsp-tmp-ffffff-{dead.pid}-0123abcd-x_classes.tif",
        "other_output": f".geopsp-tmp-{_HOST}-{dead.pid}-0123abcd-y_classes.tif",
        "old_style": ".geopsp-tmp-0123456789ab-x_classes.tif",
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"")
    removed = {p.name for p in remove_stale_temps(final)}
    assert removed == {names["dead"], names["dead_aux"]}
    assert {p.name for p in tmp_path.iterdir()} == set(names.values()) - removed
