from pathlib import Path

import pytest

from geopsp.config import GeopspConfig, load_config, parse_set_items
from geopsp.errors import ConfigError


def test_defaults_validate() -> None:
    cfg = load_config(environ={})
    assert isinstance(cfg, GeopspConfig)
    assert cfg.predict.tile_size is None and cfg.predict.tta == "none"


def test_blend_defaults_have_one_value() -> None:
    """The packaged defaults, the schema and the library keywords agree on the blend settings."""
    import inspect

    from geopsp.config import PredictConfig
    from geopsp.inference.blend import tile_weights
    from geopsp.inference.mosaic import Mosaicker

    packaged = load_config(environ={}).predict
    schema = PredictConfig()
    assert (packaged.blend, packaged.blend_floor, packaged.margin_px) == (
        schema.blend,
        schema.blend_floor,
        schema.margin_px,
    )
    for fn in (tile_weights, Mosaicker):
        params = inspect.signature(fn).parameters
        assert (params["kernel"].default, params["floor"].default) == (schema.blend, schema.blend_floor)


def test_precedence_file_env_set(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("predict:\n  batch_size: 2\n  tta: flip\n")
    cfg = load_config(f, environ={})
    assert (cfg.predict.batch_size, cfg.predict.tta) == (2, "flip")
    cfg = load_config(f, environ={"GEOPSP_PREDICT__BATCH_SIZE": "3"})
    assert cfg.predict.batch_size == 3 and cfg.predict.tta == "flip"
    cfg = load_config(f, environ={"GEOPSP_PREDICT__BATCH_SIZE": "3"}, overrides=["predict.batch_size=5"])
    assert cfg.predict.batch_size == 5


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("predict:\n  tile_sise: 256\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, environ={})
    msg = str(info.value)
    assert str(f) in msg and "predict.tile_sise" in msg and "did you mean 'tile_size'" in msg
    assert "\n" not in msg


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"predcit.*did you mean 'predict'"):
        load_config(overrides=["predcit.tile_size=3"], environ={})


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("predict.batch_size=0", "predict.batch_size"),
        ("predict.device=tpu", "predict.device"),
        ("predict.batch_size=many", "predict.batch_size"),
    ],
)
def test_wrong_values_name_the_key(item: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[item], environ={})


def test_overlap_must_be_below_half_tile() -> None:
    with pytest.raises(ConfigError, match=r"overlap \(128\).*at most 127"):
        load_config(overrides=["predict.tile_size=256", "predict.overlap=128"], environ={})


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("predict: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(f, environ={})


def test_parse_set_items_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        parse_set_items(["no-equals-sign"])
    assert parse_set_items(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}
