"""geopsp.config.paths: what a relative path is relative to, and the example configs from anywhere.

The rule: a path written in a config file is relative to the file's folder; one from ``--set``
or a ``GEOPSP_SECTION__KEY`` variable to the working directory; ``~`` and ``${VAR}`` are
expanded. The example configs read their data from ``${GEOPSP_DATA:-../../shared/data}``.
Everything here runs on synthetic data, without the real sample data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from geopsp.classes import ClassTable
from geopsp.config import load_config
from geopsp.config.paths import DATA_ENV, expand_vars
from geopsp.errors import ConfigError
from geopsp.testing import random_class_map, sample_data_dir, write_geotiff
from geopsp.train.layouts import discover_scenes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DATA_CONFIGS = {
    "aerial_landuse.yaml": "aerial_new_brunswick",
    "deepglobe_landcover.yaml": "deepglobe/train",
    "sentinel2_lulc.yaml": "sentinel2_strzegom",
    "sentinel2_paper.yaml": "sentinel2_strzegom",
    "spacenet_buildings.yaml": "spacenet",
}


def clone_configs(dest: Path) -> Path:
    """Copy configs/ (with its class tables) to ``dest/configs``, as a clone elsewhere has it."""
    shutil.copytree(CONFIGS, dest / "configs")
    return dest / "configs"


def sentinel2_like(folder: Path, dates: tuple[str, ...] = ("20220619", "20230530"), size: int = 256) -> Path:
    """Write ``images/`` and ``labels/`` like the Strzegom sample: 10 uint16 bands, sparse labels."""
    ids = np.array(ClassTable.from_file(CONFIGS / "classes" / "sentinel2_lulc.yaml").ids, dtype=np.uint8)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(0)
    for k, date in enumerate(dates):
        name = f"synthetic_{date}_33u.tif"
        classes = random_class_map(size, size, n_classes=len(ids), seed=k, blob_scale=10.0)
        bands = rng.integers(200, 4000, size=(10, size, size)).astype(np.uint16) + classes.astype(np.uint16) * 300
        labels = ids[classes]
        labels[rng.random((size, size)) < 0.2] = 0  # unlabeled
        write_geotiff(folder / "images" / name, bands)
        write_geotiff(folder / "labels" / name, labels, nodata=0)
    return folder


# --------------------------------------------------------------------------- expansion


def test_expand_vars_forms() -> None:
    env = {"A": "/data", "REL": "here", "EMPTY": ""}
    assert expand_vars("${A}/x", env) == ("/data/x", False)
    assert expand_vars("$A/x", env) == ("/data/x", False)
    assert expand_vars("${NOPE:-../d}/x", env) == ("../d/x", False)
    assert expand_vars("${EMPTY:-dflt}", env) == ("dflt", False)
    assert expand_vars("${A:-dflt}", env) == ("/data", False)
    assert expand_vars("${REL}/x", env) == ("here/x", True)  # relative, from the environment
    assert expand_vars("x/${REL}", env) == ("x/here", False)  # not at the start: plain text
    assert expand_vars("a$$b{name}", env) == ("a$b{name}", False)  # templates keep their braces
    with pytest.raises(ConfigError, match=r"uses \$\{NOPE\}, which is not set; set NOPE"):
        expand_vars("${NOPE}/x", env)
    with pytest.raises(ConfigError, match="without a closing"):
        expand_vars("${A/x", env)


# --------------------------------------------------------------------------- the rule


def write_config(path: Path, train: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"train": train}), encoding="utf-8")
    return path


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory that is not the config's folder."""
    cwd = tmp_path / "work" / "deep"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return cwd


def test_config_file_paths_are_relative_to_the_file_from_any_working_directory(tmp_path: Path, elsewhere: Path):
    cfg_path = write_config(
        tmp_path / "project" / "configs" / "train.yaml",
        {
            "data": {"root": "../data", "images": "images/*.tif", "labels": "labels/{name}"},
            "classes": "classes/c.yaml",
            "out": "../runs/a",
            "model": {"encoder_weights": "weights/r18.pth"},
        },
    )
    for cfg_arg in (cfg_path, os.path.relpath(cfg_path, elsewhere)):
        train = load_config(cfg_arg, environ={}).train
        project = (tmp_path / "project").resolve()
        assert train.data.root == str(project / "data")
        assert train.classes == str(project / "configs" / "classes" / "c.yaml")
        assert train.out == str(project / "runs" / "a")
        assert train.model.encoder_weights == str(project / "configs" / "weights" / "r18.pth")
        assert (train.data.images, train.data.labels) == ("images/*.tif", "labels/{name}")  # relative to root


def test_set_and_environment_paths_are_relative_to_the_working_directory(tmp_path: Path, elsewhere: Path):
    cfg_path = write_config(tmp_path / "configs" / "train.yaml", {"data": {"root": "data"}})
    train = load_config(cfg_path, environ={}, overrides=["train.data.root=mine", "train.out=runs/b"]).train
    assert train.data.root == str(elsewhere / "mine")
    assert train.out == str(elsewhere / "runs" / "b")
    train = load_config(cfg_path, environ={"GEOPSP_TRAIN__DATA__ROOT": "../env-data"}).train
    assert train.data.root == str(elsewhere.parent / "env-data")
    train = load_config(cfg_path, environ={}, overrides={"train": {"classes": "c.yaml"}}).train  # the API's mapping
    assert train.classes == str(elsewhere / "c.yaml") and train.data.root == str(tmp_path / "configs" / "data")


def test_home_and_variables_expand(tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    cfg_path = write_config(
        tmp_path / "configs" / "train.yaml",
        {"data": {"root": "${GEOPSP_DATA:-../data}/s2", "images": "${SCENES:-images}/*.tif"}, "classes": "~/c.yaml"},
    )
    train = load_config(cfg_path, environ={}).train
    assert train.data.root == str(tmp_path / "data" / "s2")  # the default is text of the file
    assert train.classes == str(home / "c.yaml")
    assert train.data.images == "images/*.tif"
    train = load_config(cfg_path, environ={DATA_ENV: "/srv/geodata", "SCENES": "/srv/scenes"}).train
    assert (train.data.root, train.data.images) == ("/srv/geodata/s2", "/srv/scenes/*.tif")
    # a relative value of the variable is where the user stands, not where the file is
    train = load_config(cfg_path, environ={DATA_ENV: "rel"}).train
    assert train.data.root == str(elsewhere / "rel" / "s2")
    train = load_config(cfg_path, environ={}, overrides=["train.data.root=~/d"]).train
    assert train.data.root == str(home / "d")


def test_names_lists_and_unset_variables(tmp_path: Path) -> None:
    cfg_path = write_config(
        tmp_path / "train.yaml",
        {"classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}], "model": {"encoder_weights": "imagenet"}},
    )
    train = load_config(cfg_path, environ={}).train
    assert train.model.encoder_weights == "imagenet" and train.classes is not None and len(train.classes) == 2
    assert train.data.root is None  # unset: training takes the config file's folder
    write_config(cfg_path, {"data": {"root": "${WHERE}/x"}})
    with pytest.raises(ConfigError) as info:
        load_config(cfg_path, environ={})
    msg = str(info.value)
    assert msg.startswith(f"{cfg_path}: train.data.root: ") and "${WHERE}" in msg and "\n" not in msg


# --------------------------------------------------------------------------- the example configs


@pytest.mark.parametrize("name", sorted(DATA_CONFIGS))
def test_example_configs_read_geopsp_data_else_the_shared_data_beside_the_checkout(name: str, elsewhere: Path):
    train = load_config(CONFIGS / name, environ={}).train
    assert Path(str(train.data.root)) == sample_data_dir({}) / DATA_CONFIGS[name]
    train = load_config(CONFIGS / name, environ={DATA_ENV: "/srv/geodata"}).train
    assert train.data.root == f"/srv/geodata/{DATA_CONFIGS[name]}"
    assert Path(str(train.classes)).is_file()


def test_example_config_from_another_directory_with_the_data_beside_the_clone(tmp_path: Path, elsewhere: Path):
    """A clone at tmp/clone with its data at tmp/shared/data: no variable needed, from any cwd."""
    configs = clone_configs(tmp_path / "clone")
    sentinel2_like(tmp_path / "shared" / "data" / "sentinel2_strzegom", size=64)
    train = load_config(configs / "sentinel2_lulc.yaml", environ={}).train
    scenes = discover_scenes(train.data)
    assert [s.date for s in scenes] == ["20220619", "20230530"]
    assert all(s.image.is_relative_to(tmp_path / "shared" / "data") for s in scenes)


def test_example_config_dry_runs_from_a_clone_elsewhere_with_geopsp_data(tmp_path: Path, elsewhere: Path):
    """`geopsp train --dry-run` of a copied example config, GEOPSP_DATA relative to where the user stands."""
    from click.testing import CliRunner

    from geopsp.cli.main import cli

    configs = clone_configs(tmp_path / "clone")
    data = tmp_path / "datasets"
    sentinel2_like(data / "sentinel2_strzegom")
    res = CliRunner().invoke(
        cli,
        ["train", "--config", str(configs / "sentinel2_lulc.yaml"), "--dry-run", "--set", "train.threads=1"],
        env={DATA_ENV: os.path.relpath(data, elsewhere)},
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert len(summary["train_scenes"]) == 2 and summary["val_scenes"]
    assert list(elsewhere.iterdir()) == []  # nothing written


def test_missing_data_is_one_line_naming_path_origin_and_fix(tmp_path: Path) -> None:
    """From a clone without the data beside it and GEOPSP_DATA unset: exit 1 and one line that says what to do."""
    configs = clone_configs(tmp_path / "clone")
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != DATA_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cfg = configs / "sentinel2_lulc.yaml"
    res = subprocess.run(
        [sys.executable, "-m", "geopsp", "train", "--config", str(cfg), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    missing = (tmp_path / "shared" / "data" / "sentinel2_strzegom").resolve()
    assert line.startswith(f"Error: {cfg}: train.data.root: data folder {missing} does not exist: ")
    assert "'${GEOPSP_DATA:-../../shared/data}/sentinel2_strzegom' (GEOPSP_DATA unset)" in line
    assert f"relative to the config file's folder {configs.resolve()}" in line
    assert "set GEOPSP_DATA to the folder that holds it" in line and "--set train.data.root=PATH" in line


def test_missing_data_from_set_names_the_working_directory(elsewhere: Path) -> None:
    train = load_config(CONFIGS / "sentinel2_lulc.yaml", environ={}, overrides=["train.data.root=nothere"]).train
    with pytest.raises(ConfigError) as info:
        discover_scenes(train.data)
    assert str(info.value) == (
        f"train.data.root: data folder {elsewhere / 'nothere'} does not exist: 'nothere' from --set, "
        f"relative to the working directory {elsewhere}; check the path given with --set"
    )
