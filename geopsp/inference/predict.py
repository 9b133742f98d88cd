"""Batched forward passes: device choice, normalization, AMP, channels_last, TTA, reflection margin.

One code path serves CPU and CUDA; the device-specific parts are three switches:

* where normalization happens: on CUDA raw integer tiles are copied (pinned, non-blocking)
  to the GPU and normalized there, so the host only cuts tiles; on CPU the reader threads
  normalize (:meth:`Predictor.prepare`) while the model runs;
* autocast: bf16 on CUDA by default; on CPU only where it has native bf16 instructions
  (see :data:`CPU_AMP_DEFAULT`);
* ``torch.compile``: only when asked.

Every input is padded by ``margin_px`` of reflection before the model and the margin is cut
off the logits (``predict.margin_px``): a convolution's zero padding makes a tile's outer
pixels differ from what the same pixels get inside a tile, a trace that blending dilutes but
does not remove; with the margin that padding falls on pixels nobody keeps. Measured with
``bench/seams.py`` (a trained demo model, the grid moved by half a stride): 16 px together
with a blend floor of 0.001 brought the disagreement within 4 px of tile edges from 1.10x to
1.02x that elsewhere, for 1.26x the time at 256 px tiles and 1.17x at 512 px.

:meth:`Predictor.probabilities` returns softmax probabilities on the device, averaged over
the test-time augmentations in probability space; blending and argmax stay on the device too
(:class:`geopsp.inference.mosaic.Mosaicker`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from geopsp.device import cpu_has_native_bf16, cpu_name, resolve_device
from geopsp.errors import ConfigError, ModelError
from geopsp.inference.sizing import CPU_BATCH_SIZE, cuda_batch_size
from geopsp.inference.timing import StageClock
from geopsp.model.inputs import model_input
from geopsp.model.meta import BundleMeta
from geopsp.tiling.windows import Tile

__all__ = [
    "CPU_AMP_DEFAULT",
    "TTA_TRANSFORMS",
    "Predictor",
    "cpu_has_native_bf16",
    "resolve_device",
    "unwrap_logits",
]

logger = logging.getLogger(__name__)


CPU_AMP_DEFAULT = cpu_has_native_bf16()
"""bf16 autocast on CPU by default: on where the CPU has native bf16 instructions.

Measured on the development CPU (AMD EPYC, 2 cores, avx512_bf16), ``fast`` preset, 512 px
tiles: bf16 ran the model 1.3-2x faster than fp32 and gave the same class on 99.76 % of the
pixels of a real scene (untrained weights, the worst case: trained models are more confident),
above the 99.5 % bar; see ``bench/results/predict.json`` (``throughput.bf16_vs_fp32``). Without
native bf16 (AVX2-only CPUs) autocast emulates bf16 and is slower, so it stays off there."""

# Host dtypes torch can carry to the device; uint16 has no arithmetic in torch, widen it.
_HOST_DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("int32"), "uint32": np.dtype("int64")}

Transform = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]


def _identity(x: Tensor) -> Tensor:
    return x


def _flip(dims: tuple[int, ...]) -> Transform:
    def fwd(x: Tensor) -> Tensor:
        return torch.flip(x, dims)

    return fwd, fwd


def _rot(k: int, flip: bool) -> Transform:
    def fwd(x: Tensor) -> Tensor:
        y = torch.rot90(x, k, (2, 3))
        return torch.flip(y, (3,)) if flip else y

    def inv(x: Tensor) -> Tensor:
        y = torch.flip(x, (3,)) if flip else x
        return torch.rot90(y, -k, (2, 3))

    return fwd, inv


TTA_TRANSFORMS: dict[str, list[Transform]] = {
    "none": [(_identity, _identity)],
    "flip": [(_identity, _identity), _flip((3,)), _flip((2,))],
    "d4": [_rot(k, f) for f in (False, True) for k in range(4)],
}
"""Test-time augmentations: (forward, inverse) pairs; ``flip`` = identity, left-right, up-down;
``d4`` = the 8 rotations and reflections of the square."""


def unwrap_logits(out: Any) -> Tensor:
    """Return the main logits of a model output (a tensor, a tuple/list whose first item it is, or a dict)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return unwrap_logits(out[0])
    if isinstance(out, dict):
        for key in ("out", "logits", "main"):
            if key in out:
                return unwrap_logits(out[key])
    raise ModelError(f"model returned {type(out).__name__}; expected a logits tensor (N, K, H, W)")


class Predictor:
    """Run a segmentation model on batches of tiles.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``(N, K, H, W)`` (or a tuple/dict holding them) for ``(N, C, H, W)``.
    meta : BundleMeta
        Bands, normalization and classes of the model.
    device : str or torch.device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a device (:func:`geopsp.device.resolve_device`).
    amp : bool, optional
        bf16 autocast; ``None``: on for CUDA, :data:`CPU_AMP_DEFAULT` on CPU.
    channels_last : bool
        Run in channels_last memory format.
    compile : bool
        Wrap the model in ``torch.compile``.
    tta : {"none", "flip", "d4"}
        Test-time augmentation.
    margin_px : int
        Pixels of reflection added on each side of every input before the model and cropped off
        its logits, so the zero padding of the convolutions falls outside the kept pixels (keep
        ``2 * margin_px`` a multiple of the model's input multiple, 32).
    """

    array_backend = "torch"
    """The array library of its outputs (the mosaic's backend)."""

    def __init__(
        self,
        model: nn.Module,
        meta: BundleMeta,
        *,
        device: str | torch.device = "auto",
        amp: bool | None = None,
        channels_last: bool = True,
        compile: bool = False,
        tta: str = "none",
        margin_px: int = 0,
    ) -> None:
        if tta not in TTA_TRANSFORMS:
            raise ConfigError(f"unknown TTA {tta!r}; choose one of {', '.join(TTA_TRANSFORMS)}")
        self.meta = meta
        self.device = resolve_device(device, key="predict.device")
        self.is_cuda = self.device.type == "cuda"
        self.amp = (True if self.is_cuda else CPU_AMP_DEFAULT) if amp is None else bool(amp)
        self.channels_last = channels_last
        self.tta = tta
        if margin_px < 0:
            raise ConfigError(f"margin_px must be >= 0, got {margin_px}")
        self.margin_px = int(margin_px)
        self.normalize_on_device = self.is_cuda
        self.clock = StageClock(self.device)
        self._nonfinite: Tensor | None = None
        self._copy_stream = torch.cuda.Stream(self.device) if self.is_cuda else None  # type: ignore[no-untyped-call]
        self._copied: Any = None  # the CUDA event of the last host-to-device copy
        model = model.eval().to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if compile:
            model = torch.compile(model)  # type: ignore[assignment]
        self.model = model
        if self.is_cuda:
            torch.backends.cudnn.benchmark = True

    @property
    def settings(self) -> dict[str, Any]:
        """The effective device settings (for the run summary)."""
        return {
            "runtime": "torch",
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.is_cuda else cpu_name(),
            "amp": self.amp,
            "amp_dtype": "bfloat16" if self.amp else None,
            "channels_last": self.channels_last,
            "tta": self.tta,
            "margin_px": self.margin_px,
            "normalize_on": "device" if self.normalize_on_device else "host",
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }

    @property
    def model_seconds(self) -> float:
        """Seconds the model ran (TTA included): device time on CUDA, wall time on the CPU."""
        return self.clock.seconds("model")

    @property
    def transfer_seconds(self) -> float:
        """Seconds of host-to-device copies (device time on CUDA, on the copy stream)."""
        return self.clock.seconds("transfer")

    # -- the reader's side (geopsp.tiling.batches.TilePreparer) ---------------------------------

    @property
    def casts_only(self) -> bool:
        """True on CUDA: the reader only casts raw tiles into the (pinned) batch buffer."""
        return self.normalize_on_device

    def host_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        """Return the batch buffer's dtype: raw integers (uint16 widened) on CUDA, float32 on the CPU."""
        if self.normalize_on_device:
            return _HOST_DTYPES.get(np.dtype(dtype).name, np.dtype(dtype))
        return np.dtype(np.float32)

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> NDArray[Any]:
        """Allocate a batch buffer: page-locked on CUDA, so copies to the device do not block the host."""
        if not self.is_cuda:
            return np.empty(shape, dtype=dtype)
        kind = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        return torch.empty(shape, dtype=kind, pin_memory=True).numpy()

    def prepare_into(self, tile: Tile, raw: NDArray[Any], valid: NDArray[np.bool_], out: NDArray[Any]) -> None:
        """Prepare one padded ``(C, rows, cols)`` tile into a slot of a batch buffer (reader threads)."""
        if self.normalize_on_device:
            np.copyto(out, raw, casting="unsafe")
        else:
            model_input(raw, valid, self.meta.normalization, out=out)

    def batch_size_for(self, requested: int | None, shape: tuple[int, int]) -> int:
        """Return the tiles per forward pass: ``requested``, else sized to this device.

        On the CPU the default is :data:`~geopsp.inference.sizing.CPU_BATCH_SIZE`; on CUDA
        one and two tiles of ``shape`` are run once to measure what a tile costs in memory,
        and the batch is what half of the free memory holds
        (:func:`~geopsp.inference.sizing.cuda_batch_size`).
        """
        if requested is not None:
            return int(requested)
        if not self.is_cuda:
            return CPU_BATCH_SIZE
        bands = len(self.meta.bands)
        peaks = []
        for n in (1, 2):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            x = torch.zeros((n, bands, *shape), dtype=torch.float32, device=self.device)
            self.probabilities(x)
            torch.cuda.synchronize(self.device)
            peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
            del x
        free, _ = torch.cuda.mem_get_info(self.device)
        reserved_idle = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        self._nonfinite = None  # the probes are not the run's: neither their verdict nor their time
        self.clock = StageClock(self.device)
        return cuda_batch_size(
            free_bytes=int(free) + int(reserved_idle), one_tile_bytes=int(peaks[0]), two_tile_bytes=int(peaks[1])
        )

    def prepare(
        self, tile: Tile, data: NDArray[Any], valid: NDArray[np.bool_]
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Host-side preprocessing of one padded ``(C, size, size)`` tile (runs in reader threads).

        On CPU this is :func:`geopsp.model.inputs.model_input`: normalized float32 with
        :data:`~geopsp.model.inputs.MODEL_FILL` where ``valid`` is False; on CUDA it only makes
        the raw integers contiguous (widening uint16), and :meth:`to_device` does the same there.
        """
        if self.normalize_on_device:
            target = _HOST_DTYPES.get(data.dtype.name, data.dtype)
            return np.ascontiguousarray(data, dtype=target), valid
        return np.ascontiguousarray(model_input(data, valid, self.meta.normalization)), valid

    def to_device(
        self, arrays: NDArray[Any] | Sequence[NDArray[Any]], masks: NDArray[np.bool_] | Sequence[NDArray[np.bool_]]
    ) -> tuple[Tensor, Tensor]:
        """Put prepared tiles and their valid masks on the device.

        Parameters
        ----------
        arrays, masks : ndarray or sequence of ndarray
            A stacked batch ``(N, C, S, S)`` / ``(N, S, S)`` (e.g. a
            :class:`~geopsp.tiling.batches.TileBatch`'s buffers, used without a copy on the
            CPU), or one array per tile (stacked here).

        Returns
        -------
        x : Tensor, shape (N, C, S, S), float32
            The model input (:func:`geopsp.model.inputs.model_input` of every tile).
        valid : Tensor, shape (N, S, S), bool

        Notes
        -----
        On CUDA the copy runs on a side stream from page-locked memory, so it overlaps the
        previous batch's kernels; the model's stream waits for it on the device, not the host.
        :meth:`copy_done` tells when the host buffers may be reused.
        """
        x = torch.from_numpy(arrays if isinstance(arrays, np.ndarray) else np.stack(arrays))
        m = torch.from_numpy(masks if isinstance(masks, np.ndarray) else np.stack(masks))
        if not self.is_cuda:
            return (model_input(x, m, self.meta.normalization) if self.normalize_on_device else x), m
        if not x.is_pinned():
            x, m = x.pin_memory(), m.pin_memory()
        compute = torch.cuda.current_stream(self.device)
        with self.clock.time("transfer", self._copy_stream), torch.cuda.stream(self._copy_stream):
            xd = x.to(self.device, non_blocking=True)
            md = m.to(self.device, non_blocking=True)
        done = torch.cuda.Event()  # type: ignore[no-untyped-call]
        done.record(self._copy_stream)
        compute.wait_event(done)
        xd.record_stream(compute)  # made on the copy stream, used on this one
        md.record_stream(compute)
        self._copied = done
        return model_input(xd, md, self.meta.normalization), md

    def copy_done(self) -> Callable[[], None] | None:
        """Return what waits until the last :meth:`to_device` copy has read its host buffers (None on the CPU)."""
        return None if self._copied is None else self._copied.synchronize

    @torch.inference_mode()
    def logits(self, x: Tensor) -> Tensor:
        """Raw logits of one forward pass (no TTA), float32, with the reflection margin cropped off."""
        h, w = x.shape[2], x.shape[3]
        mh, mw = min(self.margin_px, h - 1), min(self.margin_px, w - 1)  # reflection needs pad < size
        if mh or mw:
            x = torch.nn.functional.pad(x, (mw, mw, mh, mh), mode="reflect")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = unwrap_logits(self.model(x))
        if out.ndim != 4 or out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:]:
            raise ModelError(
                f"model returned logits of shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                "expected (N, K, H, W) at the input size"
            )
        if out.shape[1] != len(self.meta.classes):
            raise ModelError(
                f"model returned {out.shape[1]} channels but the bundle lists {len(self.meta.classes)} classes"
            )
        return out[:, :, mh : mh + h, mw : mw + w].float()

    @torch.inference_mode()
    def probabilities(self, x: Tensor) -> Tensor:
        """Softmax probabilities ``(N, K, S, S)`` float32, averaged over the TTA transforms."""
        with self.clock.time("model"):
            return self._probabilities(x)

    def _probabilities(self, x: Tensor) -> Tensor:
        transforms = TTA_TRANSFORMS[self.tta]
        h, w = x.shape[2], x.shape[3]
        if self.tta == "d4" and h != w:  # rotations need a square: pad, then crop back
            side = max(h, w)
            x = torch.nn.functional.pad(x, (0, side - w, 0, side - h), mode="replicate")
        acc: Tensor | None = None
        for fwd, inv in transforms:
            p = inv(torch.softmax(self.logits(fwd(x)), dim=1))
            acc = p if acc is None else acc.add_(p)
        assert acc is not None
        if len(transforms) > 1:
            acc = acc.div_(len(transforms))
        acc = acc[:, :, :h, :w]
        self._check_finite(acc)
        return acc.contiguous()

    def _check_finite(self, probs: Tensor) -> None:
        """Refuse NaN/inf probabilities: an argmax over NaN picks class 0 without a word.

        On CPU this checks at once; on CUDA the verdict stays on the device (no sync per batch)
        until :meth:`raise_if_nonfinite`.
        """
        bad = ~torch.isfinite(probs).all()
        if self.is_cuda:
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        elif bool(bad):
            raise ModelError(_NONFINITE)

    def raise_if_nonfinite(self) -> None:
        """Raise :class:`~geopsp.errors.ModelError` if any batch so far gave non-finite probabilities."""
        if self._nonfinite is not None and bool(self._nonfinite):
            raise ModelError(_NONFINITE)


_NONFINITE = (
    "the model returned NaN or infinite probabilities (its inputs are always finite); its weights are "
    "corrupt or bf16 overflowed: try --no-amp, or retrain the model"
)
