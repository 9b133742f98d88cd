"""Model bundles: one ``.safetensors`` file holding a model's weights and its metadata.

A bundle is a plain safetensors file. Its header's ``__metadata__`` (string values only)
carries:

- ``format``: ``"geopsp-bundle"``, the marker that tells a bundle from any safetensors file;
- ``geopsp``: the JSON of :meth:`BundleMeta.to_dict() <geopsp.model.meta.BundleMeta.to_dict>`
  (architecture, bands, normalization, classes, tile defaults, provenance);
- ``format_version`` and ``geopsp_version``: which geopsp wrote it;
- ``sha256``: a digest over that JSON and every tensor (name, dtype, shape, bytes), so a
  modified or corrupted file is refused.

Loading never unpickles anything: the header is parsed as JSON and the tensors are read by
safetensors. Every problem with a file becomes a :class:`~geopsp.errors.CheckpointError` that
names the file and says what is wrong. Reading the metadata alone (:func:`read_bundle_meta`)
reads only the header and does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopsp.errors import CheckpointError, ConfigError, ModelError
from geopsp.io.atomic import atomic_output
from geopsp.model.meta import FORMAT_VERSION, BundleMeta

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "inspect_bundle",
    "load_bundle",
    "read_bundle_meta",
    "resolve_model",
    "save_bundle",
]

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "geopsp-bundle"
"""Value of the ``format`` metadata key that marks a geopsp bundle."""

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True, slots=True)
class Bundle:
    """A loaded bundle.

    Attributes
    ----------
    model : torch.nn.Module
        The network with its trained weights, in eval mode, on the requested device.
    meta : BundleMeta
        Everything needed to use it: bands, normalization, classes, tile defaults.
    path : Path
        The file it was loaded from.
    """

    model: nn.Module
    meta: BundleMeta
    path: Path


@dataclass(frozen=True, slots=True)
class _Header:
    metadata: dict[str, str]
    tensors: dict[str, dict[str, Any]]
    size_bytes: int


# --------------------------------------------------------------------------------------------
# Header parsing (pure Python, no torch)


def _read_header(path: Path) -> _Header:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: file is empty or truncated ({size} bytes); not a geopsp bundle")
            kind = _sniff_foreign(head)
            if kind:
                raise CheckpointError(
                    f"{path}: is {kind}, not a geopsp bundle (safetensors); geopsp never unpickles files. "
                    f"Re-export the weights with geopsp.model.save_bundle"
                )
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER_BYTES or n < 2:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n} is implausible)")
            if 8 + n > size:
                raise CheckpointError(
                    f"{path}: truncated: the header needs {n} bytes but the file has {size - 8} after the length field"
                )
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read bundle ({exc.strerror or exc}); check the path") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: bundle header is not valid JSON ({exc}); the file is damaged") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: bundle header is not a JSON object; the file is damaged")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: a safetensors file without geopsp metadata; not a geopsp bundle")
    if metadata.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(
            f"{path}: safetensors metadata has format={metadata.get('format')!r}, expected {BUNDLE_FORMAT!r}; "
            f"not a geopsp bundle"
        )
    end = 0
    for name, entry in header.items():
        try:
            begin, stop = (int(v) for v in entry["data_offsets"])
            shape = [int(d) for d in entry["shape"]]
            str(entry["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}; the file is damaged") from exc
        if begin < 0 or stop < begin or any(d < 0 for d in shape):
            raise CheckpointError(f"{path}: invalid offsets or shape for tensor {name!r}; the file is damaged")
        end = max(end, stop)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: truncated: the header describes {end} bytes of weights but only {size - 8 - n} are present"
        )
    return _Header(metadata=dict(metadata), tensors=header, size_bytes=size)


def _sniff_foreign(head: bytes) -> str | None:
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (a torch.save checkpoint?)"
    if head[:1] == b"\x80" and head[1:2] in {bytes([v]) for v in range(2, 6)}:
        return "a Python pickle (a torch checkpoint?)"
    return None


def _meta_from_header(path: Path, header: _Header) -> BundleMeta:
    version_str = header.metadata.get("format_version")
    if version_str is not None and version_str.isdigit() and int(version_str) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: bundle format version {version_str} is newer than this geopsp supports "
            f"({FORMAT_VERSION}); upgrade geopsp"
        )
    text = header.metadata.get("geopsp")
    if text is None:
        raise CheckpointError(f"{path}: bundle has no 'geopsp' metadata; the file is damaged or not a geopsp bundle")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: bundle metadata is not valid JSON ({exc}); the file is damaged") from exc
    try:
        return BundleMeta.from_dict(data, source=str(path))
    except ConfigError as exc:
        # e.g. an invalid class table
        raise CheckpointError(f"{path}: invalid metadata ({exc}); the bundle is damaged or incompatible") from exc


def read_bundle_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """Read a bundle's metadata without loading its weights (or importing torch).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` bundle.

    Returns
    -------
    BundleMeta

    Raises
    ------
    CheckpointError
        If the file is missing, not a bundle, damaged, or of a newer format.
    """
    p = Path(path)
    return _meta_from_header(p, _read_header(p))


def inspect_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarize a bundle from its header alone (no weights are read).

    Returns
    -------
    dict
        ``path``, ``size_bytes``, ``format_version``, ``geopsp_version`` (that wrote it),
        ``sha256`` (the digest over its metadata and tensors), ``tensors`` (count),
        ``parameters`` (values excluding BatchNorm statistics) and
        ``meta`` (:meth:`BundleMeta.to_dict`).
    """
    p = Path(path)
    header = _read_header(p)
    meta = _meta_from_header(p, header)
    params = 0
    for name, entry in header.tensors.items():
        if not name.endswith(_BUFFER_SUFFIXES):
            count = 1
            for d in entry["shape"]:
                count *= int(d)
            params += count
    return {
        "path": str(p),
        "size_bytes": header.size_bytes,
        "format_version": meta.format_version,
        "geopsp_version": header.metadata.get("geopsp_version"),
        "sha256": header.metadata.get("sha256"),
        "tensors": len(header.tensors),
        "parameters": params,
        "meta": meta.to_dict(),
    }


# --------------------------------------------------------------------------------------------
# Save and load (torch)


def _digest(meta_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    import torch

    h = hashlib.sha256()
    h.update(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            h.update(flat.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the state dict of ``model``, unwrapped from torch.compile / DataParallel, on the CPU."""
    inner: Any = getattr(model, "_orig_mod", model)
    inner = (
        getattr(inner, "module", inner)
        if type(inner).__name__ in {"DataParallel", "DistributedDataParallel"}
        else inner
    )
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in inner.state_dict().items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()  # safetensors refuses tensors sharing memory
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        out[name] = t
    return out


def _structure_diff(expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Describe how two ``name -> shape`` maps differ (empty when they match)."""
    problems = []
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    shapes = [(k, actual[k], expected[k]) for k in expected if k in actual and tuple(actual[k]) != tuple(expected[k])]
    if missing:
        problems.append(
            f"{len(missing)} missing tensors ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''})"
        )
    for k, got, want in shapes[:3]:
        problems.append(f"{k} has shape {tuple(got)}, the model needs {tuple(want)}")
    if len(shapes) > 3:
        problems.append(f"{len(shapes) - 3} more shape mismatches")
    return problems


def _dropped_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the encoder stages :func:`~geopsp.model.pspnet.drop_unused_stages` removed."""
    from geopsp.model.pspnet import DROPPED_STAGES_ATTR

    out: list[str] = []
    for name, module in model.named_modules():
        for child in getattr(module, DROPPED_STAGES_ATTR, ()):
            out.append(f"{name}.{child}." if name else f"{child}.")
    return tuple(out)


def _reference_shapes(meta: BundleMeta) -> dict[str, tuple[int, ...]]:
    import torch

    from geopsp.model.registry import build_model

    with torch.device("meta"):
        ref = build_model(meta.spec.replace(encoder_weights=None))
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def save_bundle(
    model: nn.Module,
    meta: BundleMeta,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``model``'s weights and ``meta`` to one ``.safetensors`` bundle, atomically.

    Parameters
    ----------
    model : torch.nn.Module
        A model built from ``meta.spec`` (see :func:`geopsp.model.build_model`).
    meta : BundleMeta
        Its metadata.
    path : str or os.PathLike
        Output file (conventionally ``*.safetensors``).
    overwrite : bool, default False
        Replace an existing file.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ModelError
        If the model's tensors do not match what ``meta.spec`` describes.
    OutputExistsError, OutputError
        If the file exists (and ``overwrite`` is off) or cannot be written.
    """
    from safetensors.torch import save_file

    from geopsp import __version__

    tensors = _plain_state_dict(model)
    problems = _structure_diff(_reference_shapes(meta), {k: tuple(v.shape) for k, v in tensors.items()})
    if problems:
        raise ModelError(
            f"the model does not match meta.spec ({meta.spec.arch}, {meta.spec.encoder}, "
            f"{meta.spec.in_channels} bands, {meta.spec.num_classes} classes): {'; '.join(problems)}"
        )
    meta_json = json.dumps(meta.to_dict(), allow_nan=False, sort_keys=True)
    metadata = {
        "format": BUNDLE_FORMAT,
        "format_version": str(meta.format_version),
        "geopsp_version": __version__,
        "geopsp": meta_json,
        "sha256": _digest(meta_json, tensors),
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    out = Path(path)
    logger.info("wrote bundle %s (%s, %s)", out, meta.spec.arch, meta.spec.encoder)
    return out


def load_bundle(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by :func:`save_bundle`, without unpickling anything.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.safetensors`` bundle.
    device : str or torch.device, default "cpu"
        Where to put the model.

    Returns
    -------
    Bundle
        The model in eval mode, its metadata and the path.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, tampered with, of a newer format, describes an
        unknown architecture, or its tensors do not fit the architecture it describes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from geopsp.model.registry import build_model

    p = Path(path)
    header = _read_header(p)
    meta = _meta_from_header(p, header)
    spec = meta.spec.replace(encoder_weights=None)  # the bundle has the weights; never fetch any
    try:
        model = build_model(spec)
    except (ConfigError, ModelError) as exc:
        raise CheckpointError(f"{p}: cannot build the model the bundle describes: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Bundles written before unused encoder stages were dropped still carry their weights.
    dropped = _dropped_prefixes(model)
    stored = {k: tuple(int(d) for d in e["shape"]) for k, e in header.tensors.items() if not k.startswith(dropped)}
    problems = _structure_diff(expected, stored)
    if problems:
        raise CheckpointError(
            f"{p}: weights do not fit the architecture in its metadata ({spec.arch}, {spec.encoder}, "
            f"{spec.in_channels} bands, {spec.num_classes} classes): {'; '.join(problems)}"
        )
    try:
        state = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: cannot read the weights ({exc}); the file is damaged") from exc
    digest = header.metadata.get("sha256")
    if digest is None:
        raise CheckpointError(f"{p}: bundle has no checksum; it was not written by geopsp.model.save_bundle")
    if _digest(header.metadata["geopsp"], state) != digest:
        raise CheckpointError(f"{p}: checksum mismatch: the weights or metadata were modified or corrupted")
    if len(stored) < len(state):
        logger.debug("%s: ignoring %d tensors of encoder stages the model never runs", p, len(state) - len(stored))
        state = {k: v for k, v in state.items() if k in stored}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{p}: weights do not fit the model: {str(exc).splitlines()[0]}") from exc
    model.to(device).eval()
    logger.info("loaded bundle %s (%s, %s)", p, spec.arch, spec.encoder)
    return Bundle(model=model, meta=meta, path=p)


def resolve_model(model: Any) -> tuple[nn.Module, BundleMeta, str | None]:
    """Return ``(module, meta, bundle path)`` of a bundle path, a loaded Bundle or a (module, meta) pair.

    Anything with ``.model`` and ``.meta`` counts as a loaded bundle.

    Raises
    ------
    ConfigError
        For anything else.
    """
    if isinstance(model, (str, os.PathLike)):
        b = load_bundle(model, device="cpu")
        return b.model, b.meta, str(b.path)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], BundleMeta):
        return model[0], model[1], None
    m = getattr(model, "model", None)
    meta = getattr(model, "meta", None)
    if m is not None and isinstance(meta, BundleMeta):
        path = getattr(model, "path", None)
        return m, meta, None if path is None else str(path)
    raise ConfigError(
        f"model must be a bundle path, a loaded Bundle or an (nn.Module, BundleMeta) pair, got {type(model).__name__}"
    )
