"""The prediction plan: what a run will do, decided once, before any pixel is read.

This module is the one home of the decisions a prediction makes about a scene and a model,
used alike by :func:`geopsp.pipeline.segment_raster`, by the dry check of the command line
(:func:`check_inputs`) and by the batch client:

* whether the model can run on the scene at all, and how the scene's values reach it when
  it is stored in another data type (:func:`check_scene_for_model`, :mod:`geopsp.inference.cast`);
* the tile size and overlap (:func:`resolve_tiling`), the tile grid and the rows to compute;
* the names of every output, as one typed :class:`OutputSet` (:func:`output_set`);
* the provenance tags written into the class raster (:func:`provenance_tags`).

:func:`plan_prediction` makes all of them into one :class:`PredictionPlan`. Nothing here
imports torch; no pixel is read, except a bounded sample (:func:`geopsp.io.values.sample_values`)
of a scene stored in another type than the model's and holding no exact statistics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from geopsp.config.schema import PredictConfig, VectorizeConfig
from geopsp.encoding import QA_LAYERS, qa_order
from geopsp.errors import InputRasterError, NotGeoreferencedWarning, RemoteReadWarning, TilingError
from geopsp.inference.cast import InputCast, InputScale
from geopsp.io.atomic import check_output_path
from geopsp.io.class_metadata import SCENE_TAG
from geopsp.io.source import SceneSource, scene_name, scene_stem
from geopsp.tiling.windows import TileGrid

if TYPE_CHECKING:
    from geopsp.io.s3 import S3Destination
    from geopsp.io.scene import SceneInfo
    from geopsp.model.meta import BundleMeta

__all__ = [
    "OutputSet",
    "PredictionPlan",
    "check_inputs",
    "check_scene_for_model",
    "output_set",
    "plan_prediction",
    "provenance_tags",
    "resolve_tiling",
]

logger = logging.getLogger(__name__)

_TIF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True, slots=True)
class OutputSet:
    """The names of one run's outputs; ``None`` for the ones it does not write.

    Attributes
    ----------
    classes : Path
        The class raster (COG).
    qml : Path
        Its QGIS style.
    summary : Path
        The run summary (JSON), committed last: the marker of a complete set.
    probability, margin, entropy, disagreement : Path or None
        The QA layers (:data:`~geopsp.encoding.QA_LAYERS`; ``probability`` is the confidence).
    vector, vector_qml, preview : Path or None
        The polygons and their style, the preview PNG.
    class_areas : Path or None
        The class areas table (CSV, :mod:`geopsp.inference.area_table`); every run writes one
        (None only in a set read back from a summary of an older geopsp).
    """

    classes: Path
    qml: Path
    summary: Path
    probability: Path | None = None
    margin: Path | None = None
    entropy: Path | None = None
    disagreement: Path | None = None
    vector: Path | None = None
    vector_qml: Path | None = None
    preview: Path | None = None
    class_areas: Path | None = None

    def as_dict(self) -> dict[str, Path]:
        """Every output this run writes, by name, class raster first.

        Examples
        --------
        >>> list(output_set("a/s1.tif", "out", preview=True).as_dict())
        ['classes', 'qml', 'summary', 'preview', 'class_areas']
        """
        return {f.name: p for f in fields(self) if (p := getattr(self, f.name)) is not None}

    @property
    def checked(self) -> list[Path]:
        """The outputs an existing copy of which refuses a run without ``overwrite``: all but the styles.

        Examples
        --------
        >>> [p.name for p in output_set("a/s1.tif", "out", vector=True).checked]
        ['s1_classes.tif', 's1_summary.json', 's1_polygons.gpkg', 's1_class_areas.csv']
        """
        return [p for k, p in self.as_dict().items() if k not in ("qml", "vector_qml")]

    def written(self, staged: Sequence[Path]) -> dict[str, Path]:
        """Name what the class raster writer wrote: the rasters, their style and ``.aux.xml``.

        ``staged`` is :meth:`geopsp.io.raster.ClassRasterWriter.close`'s list; the ``aux``
        sidecar (class names and RAT) is the one output the plan cannot know in advance.
        """
        out: dict[str, Path] = {"classes": self.classes, **self.qa}
        if self.qml in staged:
            out["qml"] = self.qml
        out.update({f"{name}_qml": p for name, p in self.qa_styles.items() if p in staged})
        aux = [p for p in staged if p.name == self.classes.name + ".aux.xml"]
        if aux:
            out["aux"] = aux[0]
        return out

    @property
    def qa(self) -> dict[str, Path]:
        """The QA layers this run writes, by name, in :data:`~geopsp.encoding.QA_LAYERS` order.

        Examples
        --------
        >>> {k: p.name for k, p in output_set("a/s1.tif", "out", qa=["entropy"], probabilities=True).qa.items()}
        {'probability': 's1_probability.tif', 'entropy': 's1_entropy.tif'}
        """
        return {name: p for name in QA_LAYERS if (p := getattr(self, name)) is not None}

    @property
    def qa_styles(self) -> dict[str, Path]:
        """The QGIS style (``.qml``) of each QA layer this run writes, by layer."""
        return {name: p.with_suffix(".qml") for name, p in self.qa.items()}

    def __iter__(self) -> Iterator[Path]:
        """Iterate over the paths of :meth:`as_dict`."""
        return iter(self.as_dict().values())

    @classmethod
    def from_dict(cls, paths: Mapping[str, str | os.PathLike[str]]) -> OutputSet:
        """Read back an :meth:`as_dict` (a run summary's ``outputs``); unknown names are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: Path(v) for k, v in paths.items() if k in names})


def output_set(
    scene: str | os.PathLike[str] | SceneSource,
    out: str | os.PathLike[str],
    *,
    probabilities: bool = False,
    vector: bool = False,
    preview: bool = False,
    row_range: tuple[int, int] | None = None,
    vector_format: str = "gpkg",
    qa: Iterable[str] = (),
) -> OutputSet:
    """Name the output files of one scene.

    ``out`` is a directory (outputs are ``<stem>_classes.tif`` and friends inside it) or the
    class raster's own path ending in ``.tif`` (the others are named after it: ``x_classes.tif``
    gives ``x_probability.tif``, ``x_classes.qml``, ``x_summary.json``, ``x_class_areas.csv``).
    A strip (``row_range``) run into a directory adds ``_rows<r0>-<r1>`` to the stem. The QA
    layers ``qa`` (and ``probability`` when ``probabilities``) are ``<stem>_<layer>.tif``.

    Examples
    --------
    >>> o = output_set("a/s1.tif", "out", vector=True)
    >>> o.classes, o.qml, o.vector_qml
    (PosixPath('out/s1_classes.tif'), PosixPath('out/s1_classes.qml'), PosixPath('out/s1_polygons.qml'))
    """
    o = Path(out)
    if o.suffix.lower() in _TIF_SUFFIXES:
        classes = o
        base = o.with_suffix("")
        base = base.with_name(base.name.removesuffix("_classes"))
    else:
        stem = scene_stem(scene)
        if row_range is not None:
            stem += f"_rows{int(row_range[0])}-{int(row_range[1])}"
        base = o / stem
        classes = base.with_name(base.name + "_classes.tif")

    def named(suffix: str) -> Path:
        return base.with_name(base.name + suffix)

    polygons = named(f"_polygons.{vector_format}") if vector else None
    layers = qa_order([*qa, *(["probability"] if probabilities else [])])
    return OutputSet(
        classes=classes,
        qml=classes.with_suffix(".qml"),
        summary=named("_summary.json"),
        **{name: named(f"_{name}.tif") for name in layers},
        vector=polygons,
        vector_qml=polygons.with_suffix(".qml") if polygons is not None else None,
        preview=named("_preview.png") if preview else None,
        class_areas=named("_class_areas.csv"),
    )


def resolve_tiling(config: PredictConfig, meta: BundleMeta) -> tuple[int, int]:
    """Tile size and overlap: the config's, else the bundle's.

    When only the tile size is given and the bundle's overlap does not fit it, the overlap
    shrinks to an eighth of the tile.

    Raises
    ------
    TilingError
        If the combination cannot work.
    """
    tile = config.tile_size if config.tile_size is not None else meta.tile_size
    if config.overlap is not None:
        overlap = config.overlap
    else:
        overlap = meta.overlap
        if 2 * overlap >= tile:
            overlap = tile // 8
            logger.info("bundle overlap %d does not fit tile size %d; using overlap %d", meta.overlap, tile, overlap)
    if 2 * overlap >= tile:
        raise TilingError(
            f"overlap ({overlap}) must be less than half the tile size ({tile}); use at most {(tile - 1) // 2}"
        )
    return int(tile), int(overlap)


def provenance_tags(
    scene: str | os.PathLike[str] | SceneSource, meta: BundleMeta, rows: tuple[int, int]
) -> dict[str, str]:
    """Tags a class raster carries: the scene it comes from (its file name), the model, its rows."""
    return {
        SCENE_TAG: scene_name(scene),
        "GEOPSP_MODEL": f"{meta.spec.arch}/{meta.spec.encoder}",
        "GEOPSP_ROWS": f"{int(rows[0])}-{int(rows[1])}",
    }


@dataclass(frozen=True, slots=True)
class PredictionPlan:
    """What one prediction run will do.

    Attributes
    ----------
    scene : SceneSource
    info : SceneInfo
    meta : BundleMeta
    tile_size, overlap : int
    grid : TileGrid
        The whole scene's tile grid (strips use it too, so they stitch bit for bit).
    rows : (int, int)
        The scene rows ``[r0, r1)`` this run computes and writes.
    outputs : OutputSet
    cast : InputCast
        How the scene's values reach the model (:func:`check_scene_for_model`).
    """

    scene: SceneSource
    info: SceneInfo
    meta: BundleMeta
    tile_size: int
    overlap: int
    grid: TileGrid
    rows: tuple[int, int]
    outputs: OutputSet
    cast: InputCast

    @property
    def tags(self) -> dict[str, str]:
        """The class raster's provenance tags (:func:`provenance_tags`)."""
        return provenance_tags(self.scene, self.meta, self.rows)


def plan_prediction(
    scene: str | os.PathLike[str] | SceneSource,
    info: SceneInfo,
    meta: BundleMeta,
    out_dir_or_path: str | os.PathLike[str],
    *,
    config: PredictConfig,
    vector_config: VectorizeConfig | None = None,
    row_range: tuple[int, int] | None = None,
    overwrite: bool = False,
    prepare: bool = True,
    destination: S3Destination | None = None,
) -> PredictionPlan:
    """Plan a run, and refuse it before any work if it cannot be done.

    With ``prepare`` every output is fully checked (its folder created and tested for
    writing); without, only existing outputs are refused, so a dry check leaves the file
    system untouched. With a ``destination`` (``out_dir_or_path`` is its staging path) the
    outputs' objects are checked in S3 too (:meth:`~geopsp.io.s3.S3Destination.check_absent`).

    Raises
    ------
    InputRasterError, TilingError, OutputExistsError, OutputError
    """
    source = info.source
    cast = check_scene_for_model(info, meta, input_scale=config.input_scale)
    tile, overlap = resolve_tiling(config, meta)
    grid = TileGrid(info.height, info.width, tile, overlap)
    r0, r1 = grid.check_row_range(row_range)
    vcfg = vector_config if vector_config is not None else VectorizeConfig.model_validate({})
    outputs = output_set(
        source,
        out_dir_or_path,
        qa=config.qa_layers,
        vector=config.vector,
        preview=config.preview,
        row_range=None if row_range is None else (r0, r1),
        vector_format=vcfg.format,
    )
    for p in outputs.checked:
        if prepare or (p.exists() and not overwrite):
            check_output_path(p, overwrite=overwrite, inputs=[source.local] if source.local else [])
    if destination is not None:
        destination.check_absent(outputs.checked)
    return PredictionPlan(source, info, meta, tile, overlap, grid, (r0, r1), outputs, cast)


def check_inputs(
    scene: str | os.PathLike[str] | SceneSource,
    meta: BundleMeta,
    out_dir_or_path: str | os.PathLike[str],
    *,
    config: PredictConfig | None = None,
    vector_config: VectorizeConfig | None = None,
    overwrite: bool = False,
    row_range: tuple[int, int] | None = None,
) -> OutputSet:
    """Check a scene, the model metadata and the outputs without reading pixels or importing torch.

    An ``s3://`` output is checked in S3 (the bucket, and existing objects).

    Returns
    -------
    OutputSet
        The outputs :func:`geopsp.pipeline.segment_raster` would write (for an ``s3://``
        output, named in a staging folder that is gone again).

    Raises
    ------
    InputRasterError, TilingError, OutputExistsError, OutputError
        As :func:`geopsp.pipeline.segment_raster` would, before any work.
    """
    from geopsp.io.grid import scene_as_read
    from geopsp.io.s3 import S3Destination, is_s3_uri

    cfg = config if config is not None else PredictConfig.model_validate({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # segment_raster warns once
        warnings.simplefilter("ignore", RemoteReadWarning)
        info = scene_as_read(scene, meta, cfg)
    with contextlib.ExitStack() as stack:
        destination = None
        if is_s3_uri(out_dir_or_path):
            destination = stack.enter_context(S3Destination.staged(str(out_dir_or_path), overwrite=overwrite))
            out_dir_or_path = destination.local
        plan = plan_prediction(
            scene,
            info,
            meta,
            out_dir_or_path,
            config=cfg,
            vector_config=vector_config,
            row_range=row_range,
            overwrite=overwrite,
            prepare=False,
            destination=destination,
        )
    return plan.outputs


def check_scene_for_model(info: SceneInfo, meta: BundleMeta, *, input_scale: InputScale | None = None) -> InputCast:
    """Check that a model bundle can run on a scene, and decide how its values reach the model.

    Bands are checked from the scene's description. A scene stored in another data type than
    the model's is judged by its values (:mod:`geopsp.inference.cast`): accepted when they fit
    the model's type, from the file's exact statistics or else a bounded sampled read, and
    then converted as tiles are read, without a copy.

    Parameters
    ----------
    info : SceneInfo
        From :func:`inspect_scene`.
    meta : BundleMeta
        The model bundle's metadata.
    input_scale : (float, float, float, float), optional
        ``SRC_MIN, SRC_MAX, DST_MIN, DST_MAX``: an explicit linear mapping applied to every
        value first (``predict.input_scale``).

    Returns
    -------
    InputCast
        What the reader does with the values (nothing, when the types match); its
        :attr:`~geopsp.inference.cast.InputCast.note` is the fact a run prints.

    Raises
    ------
    InputRasterError
        When the scene lacks a band the model reads, a model band is the alpha band, or the
        scene's values do not fit the model's data type (the message gives the values found
        and a fix that does not distort them).
    """
    names = ", ".join(f"{b} ({n})" for b, n in zip(meta.bands, meta.band_names, strict=True))
    missing = [b for b in meta.bands if b > info.count]
    if missing:
        raise InputRasterError(
            f"{info.source}: the model reads bands {names} but the scene has only {info.count} band(s); "
            f"use a scene with those bands or a model trained on this band layout"
        )
    if info.alpha_band is not None and info.alpha_band in meta.bands:
        raise InputRasterError(
            f"{info.source}: band {info.alpha_band} is the scene's alpha (transparency) band, but the model reads it "
            f"as data (bands {names}); use a scene whose data bands are {list(meta.bands)} or a model trained "
            f"on bands {list(info.data_bands)}"
        )
    return InputCast.from_scene(info, meta, input_scale=input_scale)
