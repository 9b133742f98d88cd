"""Evaluation of class rasters against reference labels.

Pixel scores (IoU, F1, producer's/user's accuracy, OA, kappa) against a raster or vector
reference, streamed block by block, and SpaceNet-style building F1. Evaluation only scores
rasters that exist; predicting a scene first is the caller's step (``geopsp evaluate --model``).
"""

from __future__ import annotations

from geopsp.eval.buildings import BuildingScores, building_scores, evaluate_buildings, match_footprints
from geopsp.eval.metrics import ClassScores, ConfusionMatrix, Scores, scores_from_confusion
from geopsp.eval.raster import Evaluation, evaluate_rasters, is_vector_path, resolve_class_table
from geopsp.eval.report import write_report

__all__ = [
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
]
