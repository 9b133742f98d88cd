"""Predict a scene with a model bundle, then score the prediction."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from geopsp.config.schema import PredictConfig
from geopsp.eval.raster import Evaluation, evaluate_rasters

__all__ = ["evaluate_model"]


def evaluate_model(
    model: str | os.PathLike[str] | Any,
    scene: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    config: PredictConfig | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> tuple[Evaluation, dict[str, Path]]:
    """Segment ``scene`` with ``model`` (via :func:`geopsp.pipeline.segment_raster`) and score it.

    Parameters
    ----------
    model : path or Bundle
        A model bundle.
    scene : path
        The scene to segment.
    reference : path
        Reference labels (raster or vector), see :func:`~geopsp.eval.evaluate_rasters`.
    out_dir : path, optional
        Where the prediction is kept; default: a temporary folder removed afterwards.
    config : PredictConfig, optional
        Prediction options.
    overwrite : bool, default False
        Replace existing prediction outputs.
    **kwargs
        Passed to :func:`~geopsp.eval.evaluate_rasters` (``ignore_values``, ``field`` ...).

    Returns
    -------
    (Evaluation, outputs)
        The scores (with the bundle's class table) and the prediction's output paths (empty
        when they were written to a temporary folder).
    """
    from geopsp.model.bundle import Bundle, load_bundle
    from geopsp.pipeline import segment_raster

    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    kwargs.setdefault("classes", bundle.meta.classes)
    if out_dir is not None:
        result = segment_raster(scene, bundle, out_dir, config=config, overwrite=overwrite)
        return evaluate_rasters(result.classes, reference, **kwargs), dict(result.outputs)
    with tempfile.TemporaryDirectory(prefix="geopsp-eval-") as tmp:
        result = segment_raster(scene, bundle, tmp, config=config, overwrite=True)
        evaluation = evaluate_rasters(result.classes, reference, **kwargs)
    return evaluation, {}
