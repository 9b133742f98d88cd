"""Which runtime runs the model: the one home of ``predict.runtime`` (``auto``, ``torch``, ``onnxruntime``).

:func:`choose_runtime` decides, :func:`make_predictor` builds the predictor it chose; the
pipeline, the CLI and batch workers all go through them.

* An exported ``.onnx`` model runs in ONNX Runtime (torch cannot run it); this needs no torch.
* A bundle runs in torch, or in ONNX Runtime through an export kept in the cache
  (:func:`cached_export`, keyed by the bundle's digest, the tile and the margin).
* ``auto`` picks the fastest runtime whose classes are those of torch fp32 on this device:
  on CUDA torch (ONNX Runtime's CUDA provider is not measured faster here, nor installed);
  on a CPU ONNX Runtime, faster model-only than torch eager with identical classes (1.26x on
  the AMD EPYC of ``bench/runtime.py``, 2.1x on an Intel Xeon). For a bundle that means an
  export, 13-40 s once; ``auto`` uses ONNX Runtime when a cached export exists, or when the
  run is large enough that the export pays for itself in the same run
  (:data:`AUTO_EXPORT_MIN_MEGAPIXELS` model pixels), else torch.
  It also keeps torch where the user asked for what only torch does (bf16 autocast,
  ``torch.compile``), or when the export's check found classes that differ from torch's.

ONNX Runtime sessions are built once per process and model file (:func:`load_onnx`), so a
batch worker builds its session once however many scenes it runs.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from geopsp.config.schema import PredictConfig
from geopsp.errors import ConfigError
from geopsp.inference.ort import OnnxModel, OrtPredictor, onnxruntime_available
from geopsp.model.meta import BundleMeta

__all__ = [
    "AUTO_EXPORT_MIN_MEGAPIXELS",
    "EXACT_AGREEMENT",
    "RuntimeChoice",
    "cache_dir",
    "cached_export",
    "choose_runtime",
    "is_onnx_model",
    "load_onnx",
    "make_predictor",
    "model_meta",
    "set_threads",
]

logger = logging.getLogger(__name__)

RuntimeName = Literal["torch", "onnxruntime"]

AUTO_EXPORT_MIN_MEGAPIXELS = 100.0
"""Model pixels (scene pixels x TTA passes) from which ``auto`` exports a bundle for ONNX Runtime.

Exporting the ``fast`` preset at 512 px tiles takes 13-40 s (with its check); on the AMD EPYC
of ``bench/runtime.py`` ONNX Runtime fp32 runs the model 1.26x faster than torch fp32
(1.72 vs 1.36 Mpx/s), saving ~0.16 s per megapixel, so the export pays for itself from
~100 MP (a 10000 x 10000 scene). On the Intel Xeon where the issue measured 2.1x it pays from
~25 MP; the cache makes every later run of the same bundle free of it."""

EXACT_AGREEMENT = 0.99999
"""The export check's least class agreement with torch for ``auto`` to call ONNX Runtime identical.

Independent float32 implementations differ in the last bits; a class can flip only where two
probabilities tie to ~1e-6, a few pixels in a million."""

_SESSIONS: dict[tuple[str, int, int, int], OnnxModel] = {}
_LOCK = threading.Lock()
_THREADS: int | None = None


def set_threads(threads: int | None) -> None:
    """Set the intra-op threads of the ONNX Runtime sessions this process builds from now on (None: all CPUs).

    Batch workers call it with their share of the host's cores (``geopsp.batch.tasks.ThreadShares``).
    """
    global _THREADS
    _THREADS = None if threads is None else max(1, int(threads))


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    """The runtime a run uses and why (written to the run summary)."""

    runtime: RuntimeName
    reason: str


def is_onnx_model(model: Any) -> bool:
    """Whether ``model`` is an ONNX export: a loaded :class:`OnnxModel` or a path ending in ``.onnx``."""
    if isinstance(model, OnnxModel):
        return True
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")


def cache_dir() -> Path:
    """Return where geopsp keeps derived files.

    ``$GEOPSP_CACHE_DIR``, else ``$XDG_CACHE_HOME/geopsp``, else ``~/.cache/geopsp``.
    """
    env = os.environ.get("GEOPSP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "geopsp"


def _export_path(sha256: str, tile: int, margin: int) -> Path:
    return cache_dir() / "onnx" / f"{sha256[:24]}-t{tile}-m{margin}.onnx"


def _bundle_path(model: Any) -> Path | None:
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    path = getattr(model, "path", None)
    return None if path is None else Path(path)


def cached_export(bundle: Any, *, tile_size: int, margin_px: int, create: bool) -> Path | None:
    """Return the cached ONNX export of a bundle file for this tile and margin; made when ``create``.

    Returns
    -------
    Path or None
        ``None`` when it is not cached and ``create`` is off.
    """
    from geopsp.model.bundle import inspect_bundle

    path = _bundle_path(bundle)
    if path is None:
        return None
    digest = inspect_bundle(path)["sha256"]
    if not digest:
        return None
    out = _export_path(str(digest), tile_size, margin_px)
    if out.is_file() or not create:
        return out if out.is_file() else None
    from geopsp.model.onnx_export import export_onnx

    logger.info("exporting %s to ONNX for ONNX Runtime (once; cached as %s)", path.name, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(bundle, out, tile_size=tile_size, margin_px=margin_px, overwrite=True)
    return out


def _export_deps() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "onnx", "onnxscript"))


def _device_is_cuda(name: str) -> bool:
    if name.startswith("cuda"):
        return True
    if name != "auto":
        return False
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_runtime(
    model: Any, config: PredictConfig, *, meta: BundleMeta | None = None, pixels: int = 0
) -> RuntimeChoice:
    """Decide which runtime runs ``model`` (see the module notes).

    Parameters
    ----------
    model : path, Bundle, OnnxModel or (nn.Module, BundleMeta)
    config : PredictConfig
        ``runtime``, ``device``, ``amp``, ``compile``, ``tta``, ``tile_size`` and ``margin_px``.
    meta : BundleMeta, optional
        The bundle's metadata (for the tile size of a cached export).
    pixels : int
        Scene pixels this run computes (for whether an export pays).

    Raises
    ------
    ConfigError
        ``torch`` asked for an ONNX model, ``onnxruntime`` for a model that is neither a
        bundle file nor an export, or for CUDA, or without onnxruntime installed.
    """
    requested = config.runtime
    if is_onnx_model(model):
        if requested == "torch":
            raise ConfigError(
                f"{model if not isinstance(model, OnnxModel) else model.path}: torch cannot run an ONNX model; "
                "use --runtime onnxruntime (or auto), or pass the .safetensors bundle",
                key="predict.runtime",
            )
        if config.device.startswith("cuda"):
            raise ConfigError(
                "ONNX models run on the CPU here (onnxruntime without a CUDA provider); use --device cpu, "
                "or pass the .safetensors bundle to run on CUDA with torch",
                key="predict.device",
            )
        return RuntimeChoice("onnxruntime", "an ONNX model")
    if requested == "torch":
        return RuntimeChoice("torch", "asked for")
    if requested == "onnxruntime":
        if _bundle_path(model) is None:
            raise ConfigError(
                "--runtime onnxruntime needs a bundle file or an exported .onnx model, not a model object",
                key="predict.runtime",
            )
        if config.device.startswith("cuda"):
            raise ConfigError(
                "onnxruntime runs on the CPU here; use --device cpu or --runtime torch", key="predict.device"
            )
        if not onnxruntime_available() or not _export_deps():
            raise ConfigError(
                "running a bundle in onnxruntime exports it first, which needs torch, onnx and onnxscript; "
                "pip install 'geopsp[export]', or export it elsewhere with geopsp model export",
                key="predict.runtime",
            )
        return RuntimeChoice("onnxruntime", "asked for")
    return _auto(model, config, meta=meta, pixels=pixels)


def _auto(model: Any, config: PredictConfig, *, meta: BundleMeta | None, pixels: int) -> RuntimeChoice:
    if _device_is_cuda(config.device):
        return RuntimeChoice("torch", "CUDA: torch")
    if config.amp or config.compile:
        return RuntimeChoice("torch", "bf16 autocast or torch.compile asked for")
    if _bundle_path(model) is None:
        return RuntimeChoice("torch", "a model object (no bundle file to export)")
    if not onnxruntime_available() or not _export_deps():
        return RuntimeChoice("torch", "onnxruntime, onnx or onnxscript is not installed")
    tile = config.tile_size or (meta.tile_size if meta is not None else None)
    if tile is None:
        return RuntimeChoice("torch", "tile size unknown")
    cached = cached_export(model, tile_size=tile, margin_px=config.margin_px, create=False)
    if cached is not None:
        return _if_identical(cached, "a cached ONNX export")
    passes = {"none": 1, "flip": 3, "d4": 8}[config.tta]
    model_mp = pixels * passes / 1e6
    if model_mp < AUTO_EXPORT_MIN_MEGAPIXELS:
        return RuntimeChoice(
            "torch", f"{model_mp:.1f} model MP: below {AUTO_EXPORT_MIN_MEGAPIXELS:g}, an export would not pay"
        )
    return RuntimeChoice("onnxruntime", f"{model_mp:.1f} model MP: exporting pays")


def _if_identical(path: Path, why: str) -> RuntimeChoice:
    model = load_onnx(path)
    agreement = model.info.check.get("agreement")
    if agreement is None or float(agreement) < EXACT_AGREEMENT:
        return RuntimeChoice("torch", f"the ONNX export's classes differ from torch's (agreement {agreement})")
    return RuntimeChoice("onnxruntime", why)


def load_onnx(path: str | os.PathLike[str], *, threads: int | None = None) -> OnnxModel:
    """Load an ONNX model once per process (re-loaded only when the file changes).

    Parameters
    ----------
    path : path
    threads : int, optional
        Intra-op threads (default: :func:`set_threads`'s, else the CPUs this process may use).
    """
    p = Path(path)
    threads = threads if threads is not None else _THREADS
    try:
        st = p.stat()
    except OSError:
        return OnnxModel.load(p, threads=threads)  # raises the one-line error
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, int(threads or 0))
    with _LOCK:
        model = _SESSIONS.get(key)
        if model is None:
            for old in [k for k in _SESSIONS if k[0] == key[0]]:
                del _SESSIONS[old]
            model = OnnxModel.load(p, threads=threads)
            _SESSIONS[key] = model
    return model


def model_meta(model: Any) -> BundleMeta:
    """Return the metadata of any model :func:`make_predictor` takes, without loading torch weights.

    For an ONNX model its ``tile_size`` is the graph's fixed tile.

    Raises
    ------
    CheckpointError, ConfigError
        A file that is not a bundle or export; a model object of another kind.
    """
    if isinstance(model, OnnxModel):
        return model.meta
    if is_onnx_model(model):
        return load_onnx(model).meta
    if isinstance(model, (str, os.PathLike)):
        from geopsp.model.bundle import read_bundle_meta

        return read_bundle_meta(model)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], BundleMeta):
        return model[1]
    meta = getattr(model, "meta", None)
    if isinstance(meta, BundleMeta):
        return meta
    raise ConfigError(
        "model must be a bundle or .onnx path, a loaded Bundle or OnnxModel, or an (nn.Module, BundleMeta) pair, "
        f"got {type(model).__name__}"
    )


def make_predictor(
    model: Any, config: PredictConfig, *, pixels: int = 0, threads: int | None = None
) -> tuple[Any, BundleMeta, str | None, RuntimeChoice]:
    """Choose the runtime and build its predictor.

    Parameters
    ----------
    model : path, Bundle, OnnxModel or (nn.Module, BundleMeta)
    config : PredictConfig
    pixels : int
        Scene pixels of the run (for ``auto``).
    threads : int, optional
        ONNX Runtime intra-op threads (default: the CPUs this process may use).

    Returns
    -------
    (predictor, meta, model path, RuntimeChoice)
        A :class:`~geopsp.inference.predict.Predictor` or an :class:`~geopsp.inference.ort.OrtPredictor`.
    """
    meta = model_meta(model)
    choice = choose_runtime(model, config, meta=meta, pixels=pixels)
    logger.debug("runtime %s: %s", choice.runtime, choice.reason)
    if choice.runtime == "onnxruntime":
        if isinstance(model, OnnxModel):
            onnx = model
        elif is_onnx_model(model):
            onnx = load_onnx(model, threads=threads)
        else:
            tile = config.tile_size or meta.tile_size
            path = cached_export(model, tile_size=tile, margin_px=config.margin_px, create=True)
            assert path is not None
            onnx = load_onnx(path, threads=threads)
        if config.tile_size is not None and config.tile_size != onnx.info.tile_size:
            raise ConfigError(
                f"{onnx.path}: the graph takes {onnx.info.tile_size} px tiles, not {config.tile_size}; "
                f"drop --tile-size or re-export with --tile-size {config.tile_size}",
                key="predict.tile_size",
            )
        if config.margin_px != onnx.info.margin_px:
            logger.info(
                "%s: uses the %d px margin built into its graph (predict.margin_px %d ignored)",
                onnx.path.name,
                onnx.info.margin_px,
                config.margin_px,
            )
        source = _bundle_path(model) or onnx.path  # the file the user gave, for the summary
        return OrtPredictor(onnx, tta=config.tta), onnx.meta, str(source), choice
    from geopsp.inference.predict import Predictor
    from geopsp.model.bundle import resolve_model

    module, meta, bundle_path = resolve_model(model)
    predictor = Predictor(
        module,
        meta,
        device=config.device,
        amp=config.amp,
        channels_last=config.channels_last,
        compile=config.compile,
        tta=config.tta,
        margin_px=config.margin_px,
    )
    return predictor, meta, bundle_path, choice
