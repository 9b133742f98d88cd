"""The quick start: the whole job on synthetic data, offline, in a few minutes on a CPU.

:func:`run_demo` generates a labelled training scene and a validation scene, trains a small
PSPNet on them, exports it to ONNX, predicts a larger scene (with a nodata collar) in ONNX
Runtime through the tiler and the blending mosaicker, vectorizes the class raster, scores it
against the scene's labels and renders a preview: every output a user would open in QGIS.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DemoResult:
    """Paths the demo wrote and the scores it measured."""

    out_dir: Path
    bundle: Path
    onnx_model: Path
    scene: Path
    labels: Path
    class_raster: Path
    qml: Path | None
    probability: Path | None
    qa: dict[str, Path]
    polygons: Path
    preview: Path
    report: Path
    train_curves: Path
    scores: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def _train_config(data_dir: Path, *, minutes: float, window: int, seed: int) -> Any:
    from geopsp.config.schema import TrainConfig
    from geopsp.synthetic import SYNTHETIC_CLASSES

    return TrainConfig.model_validate(
        {
            "data": {"layout": "scenes", "root": str(data_dir), "images": "images/*.tif", "labels": "labels/{name}"},
            "classes": SYNTHETIC_CLASSES.to_list(),
            "split": {"val": ["scene_val"]},
            "sampling": {"window": window, "batch_size": 8, "windows_per_epoch": 64, "grid": 16},
            "normalization": {"method": "meanstd", "windows": 32},
            "model": {"preset": "fast", "encoder": "resnet18", "decoder_channels": 128},
            "optim": {"optimizer": "adamw", "lr": 0.002},
            "epochs": 200,
            "max_minutes": minutes,
            "val_tile": 256,
            "seed": seed,
        }
    )


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    train_minutes: float = 3.0,
    train_size: int = 768,
    predict_size: int = 2048,
    bands: int = 4,
    dtype: str = "uint16",
    seed: int = 0,
    overwrite: bool = False,
    step: Step | None = None,
) -> DemoResult:
    """Run the whole job end to end on synthetic scenes.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder for everything: ``data/`` (scenes), ``model/`` (training run), ``predict/``
        (class COG, styles, polygons, preview) and ``evaluation/``.
    train_minutes : float, default 3.0
        Training time budget.
    train_size, predict_size : int
        Edge in pixels of the training scene and of the scene that is predicted.
    bands : int, default 4
        Bands of the synthetic scenes (4: blue, green, red, near infrared).
    dtype : str, default "uint16"
        Scene dtype; 16-bit shows the per-band normalization stored in the bundle.
    seed : int, default 0
        Seeds the scenes and the training.
    overwrite : bool, default False
        Replace the outputs of an earlier demo run in ``out_dir``.
    step : callable, optional
        Called with a short description as each stage starts.

    Returns
    -------
    DemoResult
    """
    from geopsp.config.schema import PredictConfig, VectorizeConfig
    from geopsp.encoding import QA_LAYERS
    from geopsp.eval import evaluate_rasters, write_report
    from geopsp.model.onnx_export import export_onnx
    from geopsp.model.stac_mlm import write_mlm_item
    from geopsp.pipeline import segment_raster
    from geopsp.preview import render_preview
    from geopsp.synthetic import make_scene
    from geopsp.train.loop import fit
    from geopsp.vectorize import vectorize

    out = Path(out_dir)
    data = out / "data"
    say = step or (lambda _msg: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    say(f"generating synthetic {bands}-band {dtype} scenes")
    common: dict[str, Any] = {"bands": bands, "dtype": dtype, "overwrite": overwrite}
    for name, size, offset in (("scene_train", train_size, 0), ("scene_val", train_size // 2, 1)):
        make_scene(
            data / "images" / f"{name}.tif",
            labels_path=data / "labels" / f"{name}.tif",
            width=size,
            height=size,
            seed=seed + offset,
            **common,
        )
    scene, labels = make_scene(
        data / "predict" / "scene.tif",
        width=predict_size,
        height=predict_size,
        seed=seed + 2,
        nodata_edge=True,
        origin=(600000.0, 5650000.0),
        **common,
    )
    seconds["generate"] = time.perf_counter() - t0

    say(f"training a PSPNet (fast preset, resnet18) for {train_minutes:g} min")
    t = time.perf_counter()
    run = fit(
        _train_config(data, minutes=train_minutes, window=128, seed=seed),
        out / "model",
        overwrite=overwrite,
    )
    seconds["train"] = time.perf_counter() - t

    say("exporting the model to ONNX with its metadata (runs in ONNX Runtime, Deepness and GeoDeep)")
    t = time.perf_counter()
    exported = export_onnx(run.model, out / "model" / "model.onnx", tile_size=256, overwrite=overwrite)
    write_mlm_item(exported.path, overwrite=overwrite)
    seconds["export"] = time.perf_counter() - t

    say(
        f"predicting a {predict_size} x {predict_size} scene in ONNX Runtime with the tiler and blending mosaicker, "
        "with QA layers"
    )
    t = time.perf_counter()
    pred = segment_raster(
        scene,
        exported.path,
        out / "predict",
        config=PredictConfig(tile_size=256, overlap=32, batch_size=8, qa=list(QA_LAYERS)),
        overwrite=overwrite,
    )
    seconds["predict"] = time.perf_counter() - t

    say("vectorizing to land-use polygons (coverage-simplified, styled GeoPackage, with each polygon's confidence)")
    t = time.perf_counter()
    polygons = vectorize(
        pred.classes,
        out / "predict" / "scene_polygons.gpkg",
        config=VectorizeConfig(simplify=10.0, min_area_m2=2000.0),
        scene=scene.name,
        overwrite=overwrite,
        confidence=pred.probability,  # conf_mean, conf_min, disagree_frac per polygon
        disagreement=pred.outputs.get("disagreement"),
    )
    seconds["vectorize"] = time.perf_counter() - t

    say("scoring against the scene's labels and rendering a preview")
    t = time.perf_counter()
    evaluation = evaluate_rasters(pred.classes, labels)
    report_files = write_report(out / "evaluation", evaluation.to_dict(), evaluation.scores, overwrite=overwrite)
    preview = render_preview(scene, pred.classes, out / "predict" / "preview.png", outlines=True, overwrite=overwrite)
    seconds["evaluate+preview"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    scores = evaluation.scores
    summary = {
        "overall_accuracy": scores.overall_accuracy,
        "miou": scores.miou,
        "mean_f1": scores.mean_f1,
        "kappa": scores.kappa,
        "val_miou_during_training": run.scores.miou_reference_classes if run.scores else math.nan,
        "kept": run.kept,
        "epochs": run.epochs_run,
    }
    return DemoResult(
        out_dir=out,
        bundle=run.model,
        onnx_model=exported.path,
        scene=scene,
        labels=labels,
        class_raster=pred.classes,
        qml=pred.qml,
        probability=pred.probability,
        qa={name: pred.outputs[name] for name in QA_LAYERS if name in pred.outputs},
        polygons=polygons,
        preview=preview,
        report=report_files["report"],
        train_curves=run.curves,
        scores=summary,
        seconds=seconds,
    )
