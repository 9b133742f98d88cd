"""Export a bundle to ONNX: one self-describing graph that ONNX Runtime, Deepness and GeoDeep run.

The exported graph is what :class:`~geopsp.inference.predict.Predictor` does to one batch
without test-time augmentation: reflection margin, the network, crop, softmax. It takes the
normalized bands (:func:`geopsp.model.inputs.model_input`) of ``(N, C, T, T)`` tiles, with a
dynamic batch and the tile edge ``T`` fixed (Deepness and GeoDeep need a fixed tile; ONNX
Runtime plans its memory once). Its metadata is :mod:`geopsp.model.onnx_meta`.

The exporter is torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, opset 18):
the TorchScript exporter refuses the pyramid pooling (``adaptive_avg_pool2d`` to 3x3 and 6x6
bins of a map those do not divide). After writing, the export is checked: ONNX Runtime and
torch run one seeded batch and the share of pixels where their classes agree, and the largest
probability difference, are stored in the model (``geopsp_onnx.check``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from geopsp.errors import ConfigError, ModelError
from geopsp.io.atomic import atomic_output, check_output_path
from geopsp.model.bundle import Bundle, inspect_bundle, load_bundle
from geopsp.model.meta import BundleMeta
from geopsp.model.onnx_meta import INPUT_NAME, OUTPUT_NAME, OnnxInfo, deepness_keys, onnx_metadata

__all__ = ["ExportResult", "ProbabilityGraph", "export_onnx", "write_onnx"]

logger = logging.getLogger(__name__)

OPSET = 18
_CHECK_BATCH = 2


class ProbabilityGraph(nn.Module):
    """Reflection margin, network, crop, softmax: the module that is exported.

    Parameters
    ----------
    model : nn.Module
        Returns logits (or a tuple/dict holding them, :func:`~geopsp.inference.predict.unwrap_logits`).
    margin_px : int
        Reflection added on each side before the network and cropped off its logits.
    """

    def __init__(self, model: nn.Module, margin_px: int) -> None:
        super().__init__()
        self.model = model
        self.margin_px = int(margin_px)

    def forward(self, x: Tensor) -> Tensor:
        """Return softmax probabilities ``(N, K, H, W)`` for normalized ``(N, C, H, W)`` input."""
        from geopsp.inference.predict import unwrap_logits

        m = self.margin_px
        h, w = x.shape[2], x.shape[3]
        if m:
            x = nn.functional.pad(x, (m, m, m, m), mode="reflect")
        logits = unwrap_logits(self.model(x))
        if m:
            logits = logits[:, :, m : m + h, m : m + w]
        # softmax over the classes written out: ONNX Runtime's Softmax on axis 1 of NCHW
        # transposes to the last axis and back (19 % of the fast preset's time, measured);
        # these element-wise and reduce ops run in place along the channels
        e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        return e / e.sum(dim=1, keepdim=True)


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes
    ----------
    path : Path
        The ``.onnx`` file.
    info : OnnxInfo
        Its graph contract, with the export check.
    deepness : str or None
        ``None`` when the Deepness/GeoDeep keys were written, else why not.
    """

    path: Path
    info: OnnxInfo
    deepness: str | None


def check_tiling(tile_size: int, margin_px: int) -> None:
    """Refuse a tile edge and margin that the graph cannot use.

    Raises
    ------
    ConfigError
        If the tile is too small or the margin does not fit inside it (reflection needs
        ``margin < tile``).
    """
    if tile_size < 32:
        raise ConfigError(f"tile size {tile_size} is too small; use at least 32", key="tile_size")
    if margin_px < 0 or margin_px >= tile_size:
        raise ConfigError(
            f"margin {margin_px} px must be >= 0 and less than the tile ({tile_size} px)", key="margin_px"
        )


def _seeded_batch(meta: BundleMeta, tile_size: int) -> Tensor:
    """Return a reproducible check batch in normalized units: smooth fields plus noise, not pure noise."""
    rng = np.random.default_rng(0)
    n, c = _CHECK_BATCH, meta.spec.in_channels
    yy, xx = np.mgrid[0:tile_size, 0:tile_size] / tile_size
    fields = np.stack(
        [
            np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform(0.5, 3) * yy + rng.uniform()))
            for _ in range(n * c)
        ]
    ).reshape(n, c, tile_size, tile_size)
    x = fields + 0.3 * rng.standard_normal((n, c, tile_size, tile_size))
    return torch.from_numpy(x.astype(np.float32))


def _torch_probabilities(graph: nn.Module, x: Tensor) -> NDArray[np.float32]:
    with torch.inference_mode():
        out: NDArray[np.float32] = graph(x).float().numpy()
    return out


def compare_probabilities(a: NDArray[np.float32], b: NDArray[np.float32]) -> dict[str, Any]:
    """``agreement`` (share of pixels with the same argmax class), ``max_abs_diff`` and ``pixels``."""
    same = a.argmax(axis=1) == b.argmax(axis=1)
    return {
        "agreement": float(same.mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
        "pixels": int(same.size),
    }


def write_onnx(proto: Any, meta: BundleMeta, info: OnnxInfo, path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Set the metadata of an ``onnx.ModelProto`` and write it atomically as one file.

    Returns
    -------
    Path
    """
    import onnx

    keys, why = deepness_keys(meta, info.tile_size)
    info = info.replace(deepness="compatible" if why is None else why)
    del proto.metadata_props[:]
    for key, value in onnx_metadata(meta, info, deepness=keys).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "geopsp"
    with atomic_output(path, overwrite=overwrite) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return Path(path)


def export_onnx(
    bundle: str | os.PathLike[str] | Bundle,
    out: str | os.PathLike[str],
    *,
    tile_size: int | None = None,
    margin_px: int | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export a bundle to one ONNX file with its full metadata, and check it against torch.

    Parameters
    ----------
    bundle : path or Bundle
        The ``.safetensors`` bundle (or a loaded one).
    out : path
        The ``.onnx`` file to write.
    tile_size : int, optional
        The graph's fixed tile edge (default: the bundle's tile size).
    margin_px : int, optional
        Reflection margin inside the graph (default: ``predict.margin_px``'s default, 16).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    ExportResult

    Raises
    ------
    CheckpointError
        The bundle is missing or damaged.
    ModelError
        The exporter or ONNX Runtime fails on the model, or their classes disagree.
    OutputExistsError, OutputError
    """
    import onnx

    from geopsp import __version__
    from geopsp.config.schema import PredictConfig
    from geopsp.inference.ort import cpu_session

    check_output_path(out, overwrite=overwrite)
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, device="cpu")
    meta = loaded.meta
    tile = int(tile_size if tile_size is not None else meta.tile_size)
    margin = int(margin_px if margin_px is not None else PredictConfig.model_fields["margin_px"].default)
    check_tiling(tile, margin)
    graph = ProbabilityGraph(loaded.model.eval().cpu(), margin).eval()
    x = _seeded_batch(meta, tile)
    info = OnnxInfo(
        tile_size=tile,
        margin_px=margin,
        opset=OPSET,
        bundle_sha256=inspect_bundle(loaded.path)["sha256"],
        geopsp_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    with tempfile.TemporaryDirectory(prefix="geopsp-export-") as work:
        raw = Path(work) / "graph.onnx"
        _dynamo_export(graph, x, raw)
        proto = onnx.load_model(str(raw))
    # the check runs on the serialized graph, so the file is written once, check included
    session = cpu_session(proto.SerializeToString(), threads=torch.get_num_threads())
    got = np.asarray(session.run(None, {INPUT_NAME: x.numpy()})[0], dtype=np.float32)
    check = compare_probabilities(_torch_probabilities(graph, x), got)
    _, why = deepness_keys(meta, tile)
    info = info.replace(check=check, deepness="compatible" if why is None else why)
    path = write_onnx(proto, meta, info, out, overwrite=overwrite)
    logger.info("exported %s: classes agree with torch on %.5f of check pixels", path, check["agreement"])
    return ExportResult(path=path, info=info, deepness=why)


def _dynamo_export(graph: nn.Module, x: Tensor, path: Path) -> None:
    """Run torch's dynamo exporter with a dynamic batch; its console chatter goes to the debug log."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            program = torch.onnx.export(
                graph,
                (x,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch}},
                optimize=True,
                verbose=False,
            )
            if program is None:
                raise RuntimeError("the exporter returned no program")
            program.save(str(path))
    except Exception as exc:
        logger.debug("exporter output:\n%s", chatter.getvalue())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"torch.onnx.export failed on this model: {first}") from exc
    logger.debug("exporter output:\n%s", chatter.getvalue())
