"""Static int8 quantization of an exported model, calibrated and checked on real tiles of scenes.

:func:`quantize_onnx` turns a bundle (exported to fp32 ONNX first) or a geopsp fp32 ``.onnx``
into an int8 QDQ model with ONNX Runtime's static quantization, and measures how often it
gives the fp32 model's class.

Tiles
    Whole prediction tiles of the given scenes, read and normalized as prediction reads them
    (:func:`geopsp.io.scene.read_rows`, a scene of another type than the model's converted by
    :class:`~geopsp.inference.cast.InputCast`, reflection padding to the graph's tile,
    :func:`geopsp.model.inputs.model_input`, which puts :data:`~geopsp.model.inputs.MODEL_FILL`
    on nodata); all-nodata tiles are skipped. Up to ``2 * max_tiles`` of them, the same share
    from every scene (:func:`sample_tiles`), spread over it (a seeded shuffle of its tile
    grid). Every other tile calibrates, the others check; with fewer than
    :data:`MIN_SPLIT_TILES` tiles in all, the calibration tiles are checked too (the metadata's
    ``check`` says which).
Agreement
    The share of the check tiles' valid pixels where the int8 model's class is the fp32 model's:
    the scene's valid mask inside the scene (the reflection padding of an edge tile is not
    counted). A tile counts all its pixels, so a pixel in the overlap of two check tiles counts
    twice (the mosaic would blend the two tiles there).
Quantization
    QDQ, uint8 activations, int8 weights per channel: ONNX Runtime's advice for x86 CPUs. On an
    x86 CPU without VNNI (AVX2, AVX-512 without VNNI) its u8s8 kernels add pairs of products in
    16 bits, which full-range (8-bit) weights can saturate; ``reduce_range`` (7-bit weights)
    cannot. The graph goes through ``quant_pre_process`` (shape inference, graph optimization).
Candidates
    :data:`CANDIDATES`: plain QDQ of every node, then some nodes kept in fp32 (:func:`node_roles`):
    the pyramid pooling branches (a convolution on a map pooled to a few bins: free in fp32, and
    its input, a tile-wide mean, is what most often leaves the calibrated range on another
    scene), the tail (the classifier and everything after it, so the logits and probabilities
    are not rounded to 256 levels), the stem (the first convolution, fed the bands), the
    convolution before the classifier; with MinMax or Percentile calibration (Entropy calibration
    agreed 1 point less than MinMax on the Sentinel-2 model's check tiles and 4 points less on a
    held-out date, and is not tried). With 8-bit weights (no ``reduce_range``) only on an x86 CPU
    without VNNI, and with the stem kept (with the stem quantized too, 8-bit weights lost up to 2
    points there, most likely to saturation): there the check runs the saturating kernels, so it
    sees any harm; on another CPU it could not.
Choice
    By agreement, then speed: of the candidates within :data:`AGREEMENT_TOLERANCE` of the best
    agreement, the one that keeps the fewest multiply-adds in fp32 (then the higher agreement).
    Below :data:`~geopsp.model.onnx_meta.AGREEMENT_GATE` the model is still written, with a
    :class:`~geopsp.errors.QuantizationWarning`.

The int8 model carries the fp32 export's metadata (:mod:`geopsp.model.onnx_meta`) with
``geopsp_onnx.precision = "int8"`` and ``geopsp_onnx.quantization``: ``agreement``, ``pixels``,
``scenes`` (file names), ``calibration_tiles``, ``check_tiles``, ``check``, ``method``,
``excluded`` (the nodes kept in fp32), ``per_channel``, ``reduce_range`` and every candidate
tried (``trials``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.errors import CheckpointError, ConfigError, ModelError, QuantizationWarning
from geopsp.model.meta import BundleMeta
from geopsp.model.onnx_meta import AGREEMENT_GATE, INPUT_NAME, OnnxInfo, parse_onnx_metadata
from geopsp.model.quant_graph import conv_macs, name_nodes, node_roles, u8s8_may_saturate_here

__all__ = [
    "AGREEMENT_TOLERANCE",
    "CANDIDATES",
    "DEFAULT_MAX_TILES",
    "MIN_SPLIT_TILES",
    "Candidate",
    "QuantizeResult",
    "TileSet",
    "Trial",
    "choose",
    "class_agreement",
    "conv_macs",
    "node_roles",
    "predict_classes",
    "quantize_onnx",
    "sample_tiles",
    "u8s8_may_saturate_here",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TILES = 32
"""Default most calibration tiles (and most check tiles) :func:`quantize_onnx` reads."""

MIN_SPLIT_TILES = 4
"""Fewest tiles in all for separate calibration and check tiles; with fewer, the check reuses them."""

_BATCH = 4


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to quantize: a calibration method, the nodes kept in fp32, the weights' bits.

    Attributes
    ----------
    method : {"MinMax", "Percentile", "Entropy"}
        ONNX Runtime's calibration method.
    keep : tuple of str
        Roles of the nodes kept in fp32 (:func:`node_roles`): ``"pooled"``, ``"tail"``,
        ``"stem"``, ``"before_classifier"``.
    reduce_range : bool
        7-bit weights (safe from u8s8 saturation); False: 8-bit, tried only where the check
        would see saturation (an x86 CPU without VNNI).
    """

    method: str
    keep: tuple[str, ...] = ()
    reduce_range: bool = True

    @property
    def label(self) -> str:
        """``"MinMax, pooled+tail in fp32, 7-bit weights"``."""
        kept = "+".join(self.keep) + " in fp32" if self.keep else "all int8"
        return f"{self.method}, {kept}, {7 if self.reduce_range else 8}-bit weights"


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("MinMax"),
    Candidate("MinMax", ("pooled", "tail")),
    Candidate("MinMax", ("pooled", "stem", "tail")),
    Candidate("Percentile", ("pooled", "stem", "tail")),
    Candidate("Percentile", ("pooled", "stem", "before_classifier", "tail")),
    Candidate("MinMax", ("pooled", "stem", "tail"), reduce_range=False),
    Candidate("Percentile", ("pooled", "stem", "tail"), reduce_range=False),
)
"""The quantizations :func:`quantize_onnx` measures (those with 8-bit weights only on x86 without VNNI)."""

AGREEMENT_TOLERANCE = 0.001
"""Candidates this close to the best agreement count as equal; the fastest of them is taken."""


@dataclass(frozen=True, slots=True)
class TileSet:
    """Normalized tiles ready for the graph, and the pixels of them that count.

    Attributes
    ----------
    x : ndarray of float32, shape (N, C, T, T)
        Model input (:func:`~geopsp.model.inputs.model_input` of the reflection-padded tiles).
    valid : ndarray of bool, shape (N, T, T)
        Valid pixels inside the scene (False on nodata and on the padding of edge tiles).
    scenes : tuple of str
        The scene file name of each tile.
    windows : tuple of (int, int, int, int)
        Each tile's ``(row, col, height, width)`` in its scene (``height``/``width`` less than
        ``T`` for a tile cut by the scene's edge).
    """

    x: NDArray[np.float32]
    valid: NDArray[np.bool_]
    scenes: tuple[str, ...]
    windows: tuple[tuple[int, int, int, int], ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: Sequence[int]) -> TileSet:
        """Return the tiles at ``index``."""
        idx = np.asarray(index, dtype=np.int64)
        picked = idx.tolist()
        return TileSet(
            self.x[idx], self.valid[idx], tuple(self.scenes[i] for i in picked), tuple(self.windows[i] for i in picked)
        )


@dataclass(frozen=True, slots=True)
class Trial:
    """The measured agreement of one candidate.

    Attributes
    ----------
    candidate : Candidate
    excluded : tuple of str
        The nodes kept in fp32.
    agreement : float
    pixels : int
    fp32_macs : float
        Share of the graph's convolution multiply-adds left in fp32 (the speed cost).
    """

    candidate: Candidate
    excluded: tuple[str, ...]
    agreement: float
    pixels: int
    fp32_macs: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "method": self.candidate.method,
            "keep_fp32": list(self.candidate.keep),
            "reduce_range": self.candidate.reduce_range,
            "excluded": list(self.excluded),
            "agreement": self.agreement,
            "pixels": self.pixels,
            "fp32_macs": round(self.fp32_macs, 6),
        }


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    """What :func:`quantize_onnx` wrote and measured.

    Attributes
    ----------
    path : Path
        The int8 ``.onnx`` file.
    info : OnnxInfo
        Its graph contract; ``info.quantization`` is what the file stores.
    trials : tuple of Trial
        Every candidate measured, in order.
    chosen : Trial
        The one written.
    """

    path: Path
    info: OnnxInfo
    trials: tuple[Trial, ...]
    chosen: Trial

    @property
    def agreement(self) -> float:
        """Share of the check tiles' valid pixels where the int8 class is the fp32 class."""
        return float(self.info.quantization["agreement"])

    @property
    def pixels(self) -> int:
        """Valid pixels compared."""
        return int(self.info.quantization["pixels"])

    @property
    def passed(self) -> bool:
        """Whether the agreement reaches :data:`~geopsp.model.onnx_meta.AGREEMENT_GATE`."""
        return self.agreement >= AGREEMENT_GATE


# --- tiles ---------------------------------------------------------------------------------


def _overlap(meta: BundleMeta, tile: int) -> int:
    return meta.overlap if 2 * meta.overlap < tile else tile // 8


def sample_tiles(
    scenes: Sequence[str | os.PathLike[str]],
    meta: BundleMeta,
    tile_size: int,
    *,
    max_tiles: int,
    seed: int = 0,
) -> TileSet:
    """Read up to ``max_tiles`` non-empty prediction tiles, spread over the scenes.

    Each scene's tile grid (the prediction grid: ``tile_size`` and the bundle's overlap) is
    shuffled with ``seed``; its tiles are read in that order, all-nodata tiles skipped, until
    it has given its share (``max_tiles`` split evenly; a scene whose grid has fewer tiles
    leaves the rest to the others).

    Parameters
    ----------
    scenes : sequence of path
    meta : BundleMeta
        The model's metadata (bands, dtype, normalization, overlap).
    tile_size : int
        The graph's tile edge.
    max_tiles : int
    seed : int

    Returns
    -------
    TileSet
        In scene order, then shuffled grid order.

    Raises
    ------
    InputRasterError
        A scene is missing or unreadable, or its bands or dtype do not fit the model.
    ConfigError
        No scene given, or every tile of every scene is nodata.
    """
    from geopsp.inference.plan import check_scene_for_model
    from geopsp.io.scene import inspect_scene, open_scene
    from geopsp.model.inputs import model_input
    from geopsp.tiling.reader import pad_tile
    from geopsp.tiling.windows import TileGrid

    if not scenes:
        raise ConfigError("no calibration scene given; pass at least one scene (--calibrate SCENE)")
    if max_tiles < 1:
        raise ConfigError(f"max_tiles must be >= 1, got {max_tiles}", key="max_tiles")
    infos = [inspect_scene(s) for s in scenes]
    casts = [check_scene_for_model(info, meta) for info in infos]
    for cast in casts:
        if cast.note is not None:
            logger.warning("%s", cast.note)
    overlap = _overlap(meta, tile_size)
    grids = [TileGrid(info.height, info.width, tile_size, overlap) for info in infos]
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(g)).tolist() for g in grids]
    # even shares; a scene with fewer grid tiles than its share leaves the rest to the others
    shares = [0] * len(infos)
    left = max_tiles
    for rank, k in enumerate(sorted(range(len(infos)), key=lambda i: len(grids[i]))):
        shares[k] = min(len(grids[k]), -(-left // (len(infos) - rank)))
        left -= shares[k]
    xs: list[NDArray[np.float32]] = []
    valids: list[NDArray[np.bool_]] = []
    names: list[str] = []
    windows: list[tuple[int, int, int, int]] = []
    for info, cast, grid, order, share in zip(infos, casts, grids, orders, shares, strict=True):
        got = 0
        with open_scene(info) as (src, _):
            for flat in order:
                if got >= share:
                    break
                tile = grid.tile(*divmod(int(flat), len(grid.col_offsets)))
                data, valid = cast.read_rows(src, info, tile.row, tile.height, meta.bands, tile.col, tile.width)
                if not valid.any():
                    continue
                padded, pvalid = pad_tile(data, valid, tile_size)
                xs.append(np.ascontiguousarray(model_input(padded, pvalid, meta.normalization)))
                inside = np.zeros((tile_size, tile_size), dtype=np.bool_)
                inside[: tile.height, : tile.width] = valid
                valids.append(inside)
                names.append(info.source.name)
                windows.append((tile.row, tile.col, tile.height, tile.width))
                got += 1
    if not xs:
        shown = ", ".join(i.source.name for i in infos)
        raise ConfigError(f"{shown}: every tile is nodata; calibrate on scenes with valid pixels")
    return TileSet(np.stack(xs), np.stack(valids), tuple(names), tuple(windows))


def _split(tiles: TileSet) -> tuple[TileSet, TileSet, bool]:
    """Every other tile calibrates, the others check; too few tiles: the same tiles do both."""
    n = len(tiles)
    if n < MIN_SPLIT_TILES:
        return tiles, tiles, False
    return tiles.take(range(0, n, 2)), tiles.take(range(1, n, 2)), True


class _CalibrationTiles:
    """ONNX Runtime's ``CalibrationDataReader`` over normalized tiles, one tile a batch.

    ``__len__`` and ``set_range`` let ``quantize_static`` collect the statistics one tile at a
    time (``CalibStridedMinMax``), so calibration holds one tile's activations, not all of them.
    """

    def __init__(self, x: NDArray[np.float32]) -> None:
        self.x = x
        self.start, self.end, self.pos = 0, len(x), 0

    def __len__(self) -> int:
        return len(self.x)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.x))
        self.pos = self.start

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        if self.pos >= self.end:
            return None
        batch = self.x[self.pos : self.pos + 1]
        self.pos += 1
        return {INPUT_NAME: batch}


class _ToDebug(logging.Filter):
    """Drop ONNX Runtime's Python log records, re-logging them at debug level on geopsp's logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("onnxruntime") or "onnxruntime" in record.pathname:
            logger.debug("onnxruntime: %s", record.getMessage())
            return False
        return True


class _DebugHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logger.debug("onnxruntime: %s", record.getMessage())


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Keep the quantization tool's prints and log records off the console (they go to the debug log)."""
    chatter = io.StringIO()
    root_filter = _ToDebug()
    ort_logger = logging.getLogger("onnxruntime")
    handler = _DebugHandler()
    propagate = ort_logger.propagate
    logging.root.addFilter(root_filter)
    ort_logger.addHandler(handler)
    ort_logger.propagate = False
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            yield
    finally:
        logging.root.removeFilter(root_filter)
        ort_logger.removeHandler(handler)
        ort_logger.propagate = propagate
        if chatter.getvalue().strip():
            logger.debug("onnxruntime quantization output:\n%s", chatter.getvalue())


def _preprocess(src: Path, dst: Path) -> bool:
    """``quant_pre_process`` (shape inference, graph optimizations); False and a plain copy if it fails."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_ort():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        ok = True
    except Exception as exc:  # its failure modes are many; the plain graph quantizes too
        logger.debug("quant_pre_process failed (%s); quantizing the graph as exported", exc)
        onnx.save_model(onnx.load_model(str(src)), str(dst))
        ok = False
    proto = onnx.load_model(str(dst))
    name_nodes(proto)
    onnx.save_model(proto, str(dst))
    return ok


def _quantize(
    src: Path,
    dst: Path,
    x: NDArray[np.float32],
    method: str,
    excluded: Sequence[str],
    *,
    reduce_range: bool = True,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    try:
        with _quiet_ort():
            quantize_static(
                str(src),
                str(dst),
                _CalibrationTiles(x),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(excluded),
                calibrate_method=getattr(CalibrationMethod, method),
                extra_options={"CalibStridedMinMax": 1, "CalibTensorRangeSymmetric": False},
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{src.name}: ONNX Runtime's static quantization failed ({method}): {first[:300]}") from exc


def predict_classes(session: Any, x: NDArray[np.float32], *, batch: int = _BATCH) -> NDArray[np.int16]:
    """Argmax output channel of every pixel of normalized tiles ``(N, C, T, T)`` -> ``(N, T, T)``.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    x : ndarray of float32
    batch : int
        Tiles per run.
    """
    name = session.get_inputs()[0].name
    out = np.empty((x.shape[0], x.shape[2], x.shape[3]), dtype=np.int16)
    for i in range(0, x.shape[0], batch):
        p = session.run(None, {name: np.ascontiguousarray(x[i : i + batch])})[0]
        out[i : i + batch] = np.asarray(p).argmax(axis=1)
    return out


def class_agreement(a: NDArray[Any], b: NDArray[Any], valid: NDArray[np.bool_]) -> tuple[float, int]:
    """Share of ``valid`` pixels where the classes ``a`` and ``b`` are the same, and how many pixels.

    Examples
    --------
    >>> class_agreement(np.array([[1, 2, 3]]), np.array([[1, 0, 3]]), np.array([[True, True, False]]))
    (0.5, 2)
    """
    pixels = int(np.count_nonzero(valid))
    if pixels == 0:
        raise ValueError("no valid pixel to compare")
    same = int(np.count_nonzero((a == b) & valid))
    return same / pixels, pixels


# --- the whole job -------------------------------------------------------------------------


def _load_fp32(model: Any, work: Path) -> Path:
    """Return the fp32 ``.onnx`` to quantize: the file given (checked), or the bundle exported into ``work``."""
    import onnx

    if isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx"):
        p = Path(model)
        if not p.is_file():
            raise CheckpointError(f"{p}: no such ONNX model; check the path")
        try:
            proto = onnx.load_model(str(p), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{p}: not a readable ONNX model ({first[:200]}); the file is damaged or truncated, re-export it"
            ) from exc
        _, info = parse_onnx_metadata(p, {e.key: e.value for e in proto.metadata_props})
        if info.precision != "fp32":
            raise CheckpointError(
                f"{p}: is already {info.precision}; quantize its fp32 export (geopsp model export BUNDLE) instead"
            )
        return p
    from geopsp.model.onnx_export import export_onnx

    return export_onnx(model, work / "fp32.onnx").path


def _check_scenes_early(model: Any, scenes: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse missing or unfit scenes before a bundle is exported (seconds) or a graph loaded."""
    from geopsp.inference.plan import check_scene_for_model
    from geopsp.io.scene import inspect_scene

    if not scenes:
        raise ConfigError("no calibration scene given; pass at least one scene (--calibrate SCENE)")
    infos = [inspect_scene(s) for s in scenes]
    meta = getattr(model, "meta", None)
    if meta is None and isinstance(model, (str, os.PathLike)) and not str(model).lower().endswith(".onnx"):
        from geopsp.model.bundle import read_bundle_meta

        meta = read_bundle_meta(model)
    if isinstance(meta, BundleMeta):
        for info in infos:
            check_scene_for_model(info, meta)


def choose(trials: Sequence[Trial], *, tolerance: float = AGREEMENT_TOLERANCE) -> Trial:
    """Pick by agreement, then speed: the fewest fp32 multiply-adds within ``tolerance`` of the best.

    Examples
    --------
    >>> a = Trial(Candidate("MinMax"), (), 0.9995, 10, 0.0)
    >>> b = Trial(Candidate("MinMax", ("stem",)), ("conv",), 0.9999, 10, 0.2)
    >>> choose([a, b]) is a, choose([a, b], tolerance=0.0) is b
    (True, True)
    """
    if not trials:
        raise ValueError("no trial to choose from")
    best = max(t.agreement for t in trials)
    near = [t for t in trials if t.agreement >= best - tolerance]
    return min(near, key=lambda t: (t.fp32_macs, -t.agreement))


def quantize_onnx(
    model: Any,
    scenes: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    max_tiles: int = DEFAULT_MAX_TILES,
    overwrite: bool = False,
    threads: int | None = None,
    candidates: Sequence[Candidate] | None = None,
    seed: int = 0,
) -> QuantizeResult:
    """Quantize a model to int8, calibrated on tiles of ``scenes``, and measure it against fp32.

    Parameters
    ----------
    model : path or Bundle
        A bundle (``.safetensors``, or loaded; exported to fp32 ONNX first, in a temporary
        folder) or an fp32 geopsp ``.onnx`` export.
    scenes : sequence of path
        Scenes like those the model will segment (its bands and dtype). The calibration and
        check tiles come from them (see the module docs).
    out : path
        The int8 ``.onnx`` to write.
    max_tiles : int
        Most calibration tiles, and most check tiles (``2 * max_tiles`` are read at most).
    overwrite : bool
        Replace an existing ``out``.
    threads : int, optional
        ONNX Runtime threads for the check (default: the CPUs this process may use).
    candidates : sequence of Candidate, optional
        What to measure (default: :data:`CANDIDATES`, those with 8-bit weights only where
        :func:`u8s8_may_saturate_here`); :func:`choose` picks one.
    seed : int
        Seed of the tile sampling.

    Returns
    -------
    QuantizeResult

    Raises
    ------
    CheckpointError
        The model is missing, damaged, not a geopsp export, or already int8.
    InputRasterError
        A scene is missing or unreadable, or does not fit the model's bands or dtype.
    ConfigError
        No scenes, ``max_tiles < 1``, or the scenes hold only nodata.
    ModelError
        ONNX Runtime fails to quantize or run the model.
    OutputExistsError, OutputError

    Warns
    -----
    QuantizationWarning
        When the chosen agreement is below :data:`~geopsp.model.onnx_meta.AGREEMENT_GATE`; the
        model is written all the same, with that agreement in its metadata.
    """
    import onnx
    import onnxruntime

    from geopsp.device import cpu_count
    from geopsp.inference.ort import OnnxModel, cpu_session
    from geopsp.io.atomic import check_output_path
    from geopsp.model.onnx_export import write_onnx
    from geopsp.model.onnx_meta import deepness_keys

    if max_tiles < 1:
        raise ConfigError(f"max_tiles must be >= 1, got {max_tiles}", key="max_tiles")
    saturating = u8s8_may_saturate_here()
    todo = list(candidates) if candidates is not None else [c for c in CANDIDATES if c.reduce_range or saturating]
    if not todo:
        raise ConfigError("no quantization candidate given")
    inputs = [Path(s) for s in scenes]
    if isinstance(model, (str, os.PathLike)):
        inputs.append(Path(model))
    out_path = check_output_path(out, overwrite=overwrite, inputs=inputs)
    _check_scenes_early(model, scenes)
    n_threads = int(threads) if threads is not None else cpu_count()
    with tempfile.TemporaryDirectory(prefix="geopsp-quantize-") as tmp:
        work = Path(tmp)
        fp32_path = _load_fp32(model, work)
        fp32 = OnnxModel.load(fp32_path, threads=n_threads)
        props = dict(fp32.session.get_modelmeta().custom_metadata_map)
        meta, info = parse_onnx_metadata(fp32_path, props)  # as stored (OnnxModel adjusts the tile)
        tiles = sample_tiles(scenes, fp32.meta, info.tile_size, max_tiles=2 * max_tiles, seed=seed)
        calib, check, held_out = _split(tiles)
        calib = calib.take(range(min(len(calib), max_tiles)))
        check = check.take(range(min(len(check), max_tiles)))
        prepared = work / "prepared.onnx"
        preprocessed = _preprocess(fp32_path, prepared)
        graph = onnx.load_model(str(prepared))
        roles = node_roles(graph)
        macs = conv_macs(graph)
        total_macs = max(1, sum(macs.values()))
        del graph
        reference = predict_classes(fp32.session, check.x)
        trials: list[Trial] = []
        paths: list[Path] = []
        seen: set[tuple[str, tuple[str, ...], bool]] = set()
        for k, cand in enumerate(todo):
            excluded = tuple(sorted(name for name, r in roles.items() if r & set(cand.keep)))
            key = (cand.method, excluded, cand.reduce_range)
            if key in seen:
                continue  # a role this graph does not have: the same as an earlier candidate
            seen.add(key)
            path = work / f"candidate{k}.onnx"
            _quantize(prepared, path, calib.x, cand.method, excluded, reduce_range=cand.reduce_range)
            try:
                got = predict_classes(cpu_session(str(path), threads=n_threads), check.x)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(f"{fp32_path.name}: ONNX Runtime cannot run the int8 model: {first[:300]}") from exc
            agreement, pixels = class_agreement(reference, got, check.valid)
            share = sum(macs.get(name, 0) for name in excluded) / total_macs
            trials.append(Trial(cand, excluded, agreement, pixels, share))
            paths.append(path)
            logger.info("int8 %s: agreement %.5f, %.1f%% of multiply-adds in fp32", cand.label, agreement, 100 * share)
        chosen = choose(trials)
        quantization = {
            "agreement": chosen.agreement,
            "pixels": chosen.pixels,
            "gate": AGREEMENT_GATE,
            "scenes": sorted(set(tiles.scenes)),
            "calibration_tiles": len(calib),
            "check_tiles": len(check),
            "check": "held-out tiles" if held_out else "calibration tiles, too few to hold some out",
            "counted": "valid pixels of each whole check tile, inside its scene",
            "method": chosen.candidate.method,
            "keep_fp32": list(chosen.candidate.keep),
            "excluded": list(chosen.excluded),
            "fp32_macs": round(chosen.fp32_macs, 6),
            "per_channel": True,
            "reduce_range": chosen.candidate.reduce_range,
            "format": "QDQ",
            "activations": "uint8",
            "weights": "int8",
            "preprocessed": preprocessed,
            "cpu_u8s8_saturates": saturating,
            "trials": [t.to_dict() for t in trials],
            "onnxruntime": onnxruntime.__version__,
            "seed": seed,
        }
        int8_info = info.replace(
            precision="int8",
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            quantization=quantization,
        )
        proto = onnx.load_model(str(paths[trials.index(chosen)]))
        written = write_onnx(proto, meta, int8_info, out_path, overwrite=overwrite)
    if not chosen.agreement >= AGREEMENT_GATE:
        warnings.warn(
            f"{written}: int8 classes agree with fp32 on {chosen.agreement:.4%} of {chosen.pixels} valid check "
            f"pixels, below the {AGREEMENT_GATE:.0%} gate (written anyway); use the fp32 model, or calibrate on "
            "more scenes like those it will segment",
            QuantizationWarning,
            stacklevel=2,
        )
    _, why = deepness_keys(meta, int8_info.tile_size)
    final = int8_info.replace(deepness="compatible" if why is None else why)
    return QuantizeResult(written, final, tuple(trials), chosen)
