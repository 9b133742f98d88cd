"""ONNX Runtime: a loaded geopsp ONNX export, and the predictor that runs it without torch.

:class:`OnnxModel` is one ONNX Runtime session with the metadata the export carries
(:mod:`geopsp.model.onnx_meta`); :class:`OrtPredictor` has the interface of
:class:`~geopsp.inference.predict.Predictor` (``prepare``, ``to_device``, ``probabilities``,
``settings`` ...) over NumPy arrays, so the tile loop and the mosaic run unchanged on it. The
reflection margin is inside the graph; test-time augmentation is done here, averaged in
probability space as the torch predictor does.

Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.device import cpu_count
from geopsp.errors import CheckpointError, ConfigError, ModelError, QuantizationWarning
from geopsp.inference.sizing import CPU_BATCH_SIZE
from geopsp.model.inputs import model_input
from geopsp.model.meta import BundleMeta
from geopsp.model.onnx_meta import AGREEMENT_GATE, OnnxInfo, parse_onnx_metadata
from geopsp.tiling.windows import Tile

__all__ = ["NP_TTA_TRANSFORMS", "OnnxModel", "OrtPredictor", "cpu_session", "onnxruntime_available"]

logger = logging.getLogger(__name__)

Array = NDArray[np.float32]
NpTransform = tuple[Callable[[Array], Array], Callable[[Array], Array]]


def _identity(x: Array) -> Array:
    return x


def _flip(axis: int) -> NpTransform:
    def fwd(x: Array) -> Array:
        return np.flip(x, axis)

    return fwd, fwd


def _rot(k: int, flip: bool) -> NpTransform:
    def fwd(x: Array) -> Array:
        y = np.rot90(x, k, axes=(2, 3))
        return np.flip(y, 3) if flip else y

    def inv(x: Array) -> Array:
        y = np.flip(x, 3) if flip else x
        return np.rot90(y, -k, axes=(2, 3))

    return fwd, inv


NP_TTA_TRANSFORMS: dict[str, list[NpTransform]] = {
    "none": [(_identity, _identity)],
    "flip": [(_identity, _identity), _flip(3), _flip(2)],
    "d4": [_rot(k, f) for f in (False, True) for k in range(4)],
}
"""The test-time augmentations of :data:`geopsp.inference.predict.TTA_TRANSFORMS`, on NumPy arrays."""


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime can be imported here."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            "ONNX models need onnxruntime, which is not installed; pip install 'geopsp[onnx]'", key="predict.runtime"
        ) from exc
    return onnxruntime


def cpu_session(model: str | bytes, *, threads: int | None = None) -> Any:
    """Open an ONNX Runtime CPU session of a model file or serialized model, with geopsp's settings.

    ``threads`` intra-op threads (default: the CPUs this process may use), one inter-op thread,
    sequential execution, every graph optimization, and only errors logged (ONNX Runtime's
    warnings are not the user's to act on).
    """
    ort = _require_ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads if threads is not None else cpu_count())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class OnnxModel:
    """A geopsp ONNX export loaded into an ONNX Runtime session.

    Attributes
    ----------
    session : onnxruntime.InferenceSession
    meta : BundleMeta
        The bundle metadata it carries, with ``tile_size`` set to the graph's fixed tile.
    info : OnnxInfo
        The graph's contract (tile, margin, precision, checks).
    path : Path
    threads : int
        ONNX Runtime's intra-op threads.
    """

    session: Any
    meta: BundleMeta
    info: OnnxInfo
    path: Path
    threads: int

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threads: int | None = None) -> OnnxModel:
        """Open an exported model, check its metadata and graph, and warn about a weak int8 model.

        Parameters
        ----------
        path : str or os.PathLike
            A ``.onnx`` file written by ``geopsp model export`` or ``geopsp model quantize``.
        threads : int, optional
            Intra-op threads (default: the CPUs this process may use).

        Raises
        ------
        CheckpointError
            One line: the file is missing, not ONNX, truncated, not a geopsp export (naming the
            missing keys), or its graph does not match its metadata.
        """
        _require_ort()
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"{p}: no such ONNX model; check the path")
        n = threads if threads is not None else cpu_count()
        try:
            session = cpu_session(str(p), threads=n)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{p}: not a readable ONNX model ({first[:200]}); the file is damaged or truncated, re-export it"
            ) from exc
        props = dict(session.get_modelmeta().custom_metadata_map)
        meta, info = parse_onnx_metadata(p, props)
        if meta.tile_size != info.tile_size:
            overlap = meta.overlap if 2 * meta.overlap < info.tile_size else info.tile_size // 8
            meta = replace(meta, tile_size=info.tile_size, overlap=overlap)
        model = cls(session=session, meta=meta, info=info, path=p, threads=int(n))
        model._check_graph()
        if info.precision == "int8":
            agreement = info.agreement
            if agreement is None or agreement < AGREEMENT_GATE:
                shown = "no stored agreement" if agreement is None else f"agreement {agreement:.4f}"
                warnings.warn(
                    f"{p}: int8 model with {shown} with its fp32 model, below the {AGREEMENT_GATE:.0%} gate; "
                    "its classes may differ; use the fp32 export or re-quantize with more calibration scenes",
                    QuantizationWarning,
                    stacklevel=2,
                )
        return model

    def _check_graph(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise CheckpointError(f"{self.path}: graph has {len(inputs)} inputs; a geopsp export has one")
        shape = list(inputs[0].shape)
        t, c = self.info.tile_size, self.meta.spec.in_channels
        if len(shape) != 4 or shape[1] != c or shape[2] != t or shape[3] != t:
            raise CheckpointError(
                f"{self.path}: graph input has shape {shape} but its metadata says (N, {c}, {t}, {t}); re-export it"
            )
        k = outputs[0].shape[1] if len(outputs[0].shape) == 4 else None
        if k != len(self.meta.classes):
            raise CheckpointError(
                f"{self.path}: graph gives {k} channels but its metadata lists {len(self.meta.classes)} classes"
            )

    @property
    def input_name(self) -> str:
        """The graph's input name."""
        return str(self.session.get_inputs()[0].name)

    def run(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Probabilities ``(N, K, T, T)`` of normalized tiles ``(N, C, T, T)``.

        Raises
        ------
        ModelError
            If ONNX Runtime fails (one line).
        """
        try:
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: ONNX Runtime failed: {first[:300]}") from exc
        result: NDArray[np.float32] = np.asarray(out, dtype=np.float32)
        return result


class OrtPredictor:
    """Run an :class:`OnnxModel` on batches of tiles, with the interface of the torch Predictor.

    Parameters
    ----------
    model : OnnxModel
    tta : {"none", "flip", "d4"}
        Test-time augmentation, averaged in probability space.
    """

    is_cuda = False
    amp = False
    normalize_on_device = False
    array_backend = "numpy"
    device = "cpu"

    def __init__(self, model: OnnxModel, *, tta: str = "none") -> None:
        if tta not in NP_TTA_TRANSFORMS:
            raise ConfigError(f"unknown TTA {tta!r}; choose one of {', '.join(NP_TTA_TRANSFORMS)}")
        self.model = model
        self.meta = model.meta
        self.tta = tta
        self.margin_px = model.info.margin_px
        self.model_seconds = 0.0
        self.transfer_seconds = 0.0

    @property
    def settings(self) -> dict[str, Any]:
        """The effective runtime settings (for the run summary)."""
        import onnxruntime

        from geopsp.device import cpu_name

        return {
            "runtime": "onnxruntime",
            "device": "cpu",
            "device_name": cpu_name(),
            "model": str(self.model.path),
            "precision": self.model.info.precision,
            "amp": False,
            "amp_dtype": None,
            "channels_last": False,
            "tta": self.tta,
            "margin_px": self.margin_px,
            "normalize_on": "host",
            "threads": self.model.threads,
            "onnxruntime": onnxruntime.__version__,
            "providers": list(self.model.session.get_providers()),
        }

    def prepare(
        self, tile: Tile, data: NDArray[Any], valid: NDArray[np.bool_]
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Return one padded tile normalized (:func:`~geopsp.model.inputs.model_input`), in reader threads."""
        return np.ascontiguousarray(model_input(data, valid, self.meta.normalization)), valid

    casts_only = False
    """The reader normalizes tiles into the batch buffer (:class:`~geopsp.tiling.batches.TilePreparer`)."""

    def host_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        """Return float32: the graph takes normalized tiles."""
        return np.dtype(np.float32)

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> NDArray[Any]:
        """Allocate a batch buffer (ordinary memory)."""
        return np.empty(shape, dtype=dtype)

    def prepare_into(self, tile: Tile, raw: NDArray[Any], valid: NDArray[np.bool_], out: NDArray[Any]) -> None:
        """Normalize one padded tile into a slot of a batch buffer (reader threads)."""
        model_input(raw, valid, self.meta.normalization, out=out)

    def batch_size_for(self, requested: int | None, shape: tuple[int, int]) -> int:
        """Return ``requested``, else :data:`~geopsp.inference.sizing.CPU_BATCH_SIZE`."""
        return CPU_BATCH_SIZE if requested is None else int(requested)

    def copy_done(self) -> None:
        """Return None: nothing is copied to a device."""
        return None

    def to_device(
        self, arrays: NDArray[Any] | Sequence[NDArray[Any]], masks: NDArray[np.bool_] | Sequence[NDArray[np.bool_]]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Return a stacked batch as it is, or stack one array per tile (the host is the device)."""
        t0 = time.perf_counter()
        x = arrays if isinstance(arrays, np.ndarray) else np.stack(arrays)
        m = masks if isinstance(masks, np.ndarray) else np.stack(masks)
        self.transfer_seconds += time.perf_counter() - t0
        return x, m

    def probabilities(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Softmax probabilities ``(N, K, S, S)`` float32, averaged over the TTA transforms."""
        t0 = time.perf_counter()
        transforms = NP_TTA_TRANSFORMS[self.tta]
        t = self.model.info.tile_size
        h, w = x.shape[2], x.shape[3]
        if h > t or w > t:
            raise ModelError(
                f"{self.model.path}: the graph takes {t} px tiles, got {h}x{w}; "
                f"use --tile-size {t} or re-export with --tile-size {max(h, w)}"
            )
        if (h, w) != (t, t):
            # a scene smaller than a tile: its one input is padded to the graph's fixed square
            # by mirroring (as the tiler pads windows at scene edges) and the output cropped
            x = np.pad(x, ((0, 0), (0, 0), (0, t - h), (0, t - w)), mode="symmetric")
        acc: NDArray[np.float32] | None = None
        for fwd, inv in transforms:
            p = inv(self.model.run(np.ascontiguousarray(fwd(x))))
            acc = np.array(p, dtype=np.float32) if acc is None else np.add(acc, p, out=acc)
        assert acc is not None
        if len(transforms) > 1:
            acc /= np.float32(len(transforms))
        if not np.isfinite(acc).all():
            raise ModelError(
                f"{self.model.path}: the model returned NaN or infinite probabilities (its inputs are always "
                "finite); the file is damaged: re-export it"
            )
        self.model_seconds += time.perf_counter() - t0
        return np.ascontiguousarray(acc[:, :, :h, :w])

    def raise_if_nonfinite(self) -> None:
        """Nothing to do: :meth:`probabilities` checks every batch at once."""
