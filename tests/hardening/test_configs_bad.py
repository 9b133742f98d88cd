"""Bad configs: unknown keys, wrong types, impossible tiling, out-of-range values.

Every refusal is one line naming the file and the dotted key, with exit code 1.
"""

from __future__ import annotations

import pytest

from geopsp.config import load_config
from geopsp.errors import ConfigError

CASES = {
    "unknown key (typo)": ("predict:\n  tile_sise: 256\n", "predict.tile_sise", "did you mean 'tile_size'"),
    "unknown section": ("predcit:\n  tile_size: 256\n", "predcit", "did you mean 'predict'"),
    "unknown nested key": ("train:\n  sampling:\n    windw: 3\n", "train.sampling.windw", "did you mean 'window'"),
    "wrong type": ("predict:\n  tile_size: big\n", "predict.tile_size", "valid integer"),
    "section is not a mapping": ("predict: 5\n", "predict", "dictionary"),
    "overlap >= tile": ("predict:\n  tile_size: 64\n  overlap: 64\n", "predict", "use at most 31"),
    "overlap >= half the tile": ("predict:\n  tile_size: 64\n  overlap: 40\n", "predict", "use at most 31"),
    "tile too large": ("predict:\n  tile_size: 100000\n", "predict.tile_size", "less than or equal to"),
    "batch size 0": ("predict:\n  batch_size: 0\n", "predict.batch_size", "greater than or equal to 1"),
    "value outside 0..1": ("predict:\n  blend_floor: 7\n", "predict.blend_floor", "less than or equal to 1"),
    "not one of the choices": ("predict:\n  tta: sideways\n", "predict.tta", "'none', 'flip' or 'd4'"),
    "negative epochs": ("train:\n  epochs: -1\n", "train.epochs", "greater than or equal to 1"),
    "YAML syntax error": ("predict:\n  tile_size: [1, 2\n", "line 3", "invalid YAML"),
    "tab indentation": ("predict:\n\ttile_size: 3\n", "line 2", "invalid YAML"),
    "top level is a list": ("- a\n- b\n", "", "expected a mapping"),
    "path uses an unset variable": (
        "train:\n  data:\n    root: ${GEOPSP_HARDENING_UNSET}/x\n",
        "train.data.root",
        "${GEOPSP_HARDENING_UNSET}, which is not set; set GEOPSP_HARDENING_UNSET, or give a default",
    ),
    "path with an unclosed ${": ("train:\n  classes: ${HOME/c.yaml\n", "train.classes", "without a closing '}'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_file(cli, tmp_path, seen, case):
    text, key, fix = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    res = cli("config", "validate", "--config", path)
    assert res.code == 1, res.err
    line = res.err.strip()
    assert "\n" not in line and line.startswith(f"Error: {path}: "), line
    assert key in line and fix in line, line
    seen(f"config: {case}", line)
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(path)


@pytest.mark.parametrize(
    ("case", "args", "expect"),
    [
        ("--set without '='", ["--set", "predict.tile_size"], "expects key.path=value"),
        ("--set unknown key", ["--set", "predict.tilesize=5"], "did you mean 'tile_size'"),
        ("--set wrong type", ["--set", "predict.amp=maybe"], "predict.amp"),
        ("config file missing", ["--config", "MISSING"], "config file not found"),
        ("config path is a directory", ["--config", "DIR"], "is a directory"),
    ],
)
def test_bad_config_options(cli, tmp_path, seen, case, args, expect):
    (tmp_path / "adir").mkdir()
    args = [
        str(tmp_path / "missing.yaml") if a == "MISSING" else str(tmp_path / "adir") if a == "DIR" else a for a in args
    ]
    res = cli("config", "validate", *args)
    assert res.code == 1, res.err
    assert res.err.count("\n") == 1 and expect in res.err, res.err
    seen(f"config: {case}", res.err)


def test_impossible_tiling_on_the_command_line(cli, bundle, scene, tmp_path, seen):
    res = cli("predict", scene, "-m", bundle, "-o", tmp_path / "out", "--tile", 64, "--overlap", 32, "--no-progress")
    assert res.code == 1 and "overlap (32) must be less than half the tile size (64)" in res.err, res.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    seen("predict --tile 64 --overlap 32", res.err)


def test_tile_below_minimum_on_the_command_line(cli, bundle, scene, tmp_path, seen):
    res = cli("predict", scene, "-m", bundle, "-o", tmp_path / "out", "--tile", -5, "--no-progress")
    assert res.code == 1 and "predict.tile_size" in res.err and "(got -5)" in res.err, res.err
    seen("predict --tile -5", res.err)


def test_environment_variable_with_bad_value(cli, tmp_path, seen, monkeypatch):
    monkeypatch.setenv("GEOPSP_PREDICT__BATCH_SIZE", "-3")
    res = cli("config", "validate")
    assert res.code == 1 and "predict.batch_size" in res.err, res.err
    seen("GEOPSP_PREDICT__BATCH_SIZE=-3 in the environment", res.err)
