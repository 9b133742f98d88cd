"""The public surface: each package's exported names, listed here so a change to them is deliberate."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPORTS: dict[str, list[str]] = {
    "geopsp": [
        "CRSMismatchError",
        "CheckpointError",
        "ClassInfo",
        "ClassTable",
        "ConfigError",
        "GeopspError",
        "GeopspWarning",
        "InputRasterError",
        "InputVectorError",
        "ModelError",
        "Mosaicker",
        "NodataWarning",
        "NotGeoreferencedWarning",
        "OutputError",
        "OutputExistsError",
        "Tile",
        "TilingError",
        "__version__",
        "build_model",
        "load_bundle",
        "load_config",
        "save_bundle",
        "segment_raster",
        "vectorize",
    ],
    "geopsp.batch": [
        "BatchReport",
        "Job",
        "Manifest",
        "SceneRecord",
        "discover_jobs",
        "plan_strips",
        "run_batch",
        "safe_relative",
    ],
    "geopsp.config": [
        "BatchConfig",
        "GeopspConfig",
        "PredictConfig",
        "TrainConfig",
        "VectorizeConfig",
        "load_config",
        "parse_set_items",
    ],
    "geopsp.eval": [
        "BuildingScores",
        "ClassScores",
        "ConfusionMatrix",
        "Evaluation",
        "Scores",
        "building_scores",
        "evaluate_buildings",
        "evaluate_rasters",
        "is_vector_path",
        "match_footprints",
        "resolve_class_table",
        "scores_from_confusion",
        "write_report",
    ],
    "geopsp.inference": ["KERNELS", "Mosaicker", "Predictor", "resolve_device", "tile_weights"],
    "geopsp.io": [
        "ClassRasterWriter",
        "PROBABILITY_NODATA",
        "PROBABILITY_SCALE",
        "SceneInfo",
        "atomic_output",
        "check_output_path",
        "check_scene_for_model",
        "encode_probability",
        "inspect_scene",
        "open_scene",
        "read_class_table",
        "read_rows",
        "write_class_raster",
    ],
    "geopsp.model": [
        "ARCHITECTURES",
        "Bundle",
        "BundleMeta",
        "FORMAT_VERSION",
        "ModelSpec",
        "Normalization",
        "PRESETS",
        "PSPNet",
        "build_model",
        "count_parameters",
        "flops_per_pixel",
        "inspect_bundle",
        "load_bundle",
        "model_flops",
        "read_bundle_meta",
        "save_bundle",
        "spec_from_preset",
    ],
    "geopsp.style": [
        "qml_path_for",
        "raster_qml",
        "vector_qml",
        "write_gpkg_style",
        "write_raster_qml",
        "write_vector_qml",
    ],
    "geopsp.tiling": ["Tile", "TileGrid", "axis_offsets"],
    "geopsp.train": [
        "DEEPGLOBE_COLORS",
        "Region",
        "Scene",
        "SegmentationLoss",
        "TrainEvent",
        "TrainResult",
        "TrainingData",
        "WindowSampler",
        "compute_normalization",
        "decode_color_mask",
        "discover_scenes",
        "dry_run",
        "fit",
        "prepare_data",
        "quick_config",
        "resolve_paths",
        "split_scenes",
    ],
    "geopsp.vectorize": ["FIELDS", "RasterSource", "inspect_class_raster", "vectorize"],
}


@pytest.mark.parametrize("package", sorted(EXPORTS))
def test_exported_names(package: str) -> None:
    mod = importlib.import_module(package)
    assert mod.__all__ == EXPORTS[package]
    assert mod.__all__ == sorted(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    # nothing public is bound in the package that __all__ does not name (submodules aside)
    stray = [k for k, v in vars(mod).items() if not k.startswith("_") and not isinstance(v, types.ModuleType)]
    assert set(stray) - {"annotations", "TYPE_CHECKING", "Any"} <= set(mod.__all__)
    assert set(mod.__all__) <= set(dir(mod))


@pytest.mark.parametrize("package", sorted(EXPORTS))
def test_unknown_names_raise_attribute_error(package: str) -> None:
    mod = importlib.import_module(package)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nope'"):
        mod.nope  # noqa: B018


def test_lazy_names_import_nothing_heavy_until_used() -> None:
    code = (
        "import sys, geopsp, geopsp.model, geopsp.inference, geopsp.batch, geopsp.vectorize\n"
        "heavy = [m for m in ('torch', 'distributed', 'shapely') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "geopsp.ClassTable, geopsp.model.BundleMeta\n"
        "assert 'torch' not in sys.modules\n"
        "geopsp.inference.Predictor\n"
        "assert 'torch' in sys.modules and geopsp.inference.__dict__['Predictor'].__name__ == 'Predictor'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
