"""Download a ResNet's ImageNet weights into the torch hub cache, for ``--encoder-weights PATH``.

The one place geopsp opens a network connection, and only when asked
(``geopsp model fetch-weights``). Training never downloads: it loads the file this writes (see
:mod:`geopsp.model.pretrained`). Offline, :func:`fetch_weights` fails within ``timeout_s``
with one line naming the URL to fetch by hand elsewhere.

Sources:

- ``torchvision``: ``IMAGENET1K_V1`` of ``torchvision.models`` (the original ImageNet weights,
  which smp's ``imagenet`` ResNets are too), from ``https://download.pytorch.org/models/``,
  saved as ``<torch hub>/checkpoints/<name>-<hash>.pth``, the file torchvision itself would
  use; the hash prefix in its name is checked against the downloaded bytes.
- ``timm``: the default pretrained tag of ``timm.create_model(name)`` (``resnet18.a1_in1k``),
  from its Hugging Face repository, saved as ``<torch hub>/checkpoints/<tag>.safetensors``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from geopsp.errors import ConfigError, ModelError
from geopsp.io.atomic import atomic_output
from geopsp.io.outdir import ensure_output_dir

__all__ = ["BASE_URLS", "RESNET_NAMES", "WeightSource", "fetch_weights", "weights_url"]

logger = logging.getLogger(__name__)

WeightSource = Literal["torchvision", "timm"]

BASE_URLS: dict[str, str] = {
    "torchvision": "https://download.pytorch.org/models/",
    "timm": "https://huggingface.co/",
}
"""Default server of each source; ``base_url`` (``--base-url``, ``GEOPSP_WEIGHTS_URL``) replaces it."""

RESNET_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
)
"""Encoders whose weights can be fetched: smp ResNet encoders that torchvision and timm also have."""

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def _remote_file(name: str, source: WeightSource) -> tuple[str, str]:
    """Return ``(path on the server, file name in the cache)`` of ``name``'s weights from ``source``."""
    if source == "torchvision":
        from torchvision.models import get_model_weights

        url = str(get_model_weights(name)["IMAGENET1K_V1"].url)
        file = url.rsplit("/", 1)[-1]
        return file, file
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ModelError(f"timm has no Hugging Face weights for {name!r}; use --source torchvision")
    return f"{hub_id}/resolve/main/model.safetensors", f"{hub_id.rsplit('/', 1)[-1]}.safetensors"


def weights_url(name: str, *, source: WeightSource = "torchvision", base_url: str | None = None) -> str:
    """Return the URL :func:`fetch_weights` downloads ``name``'s ImageNet weights from.

    Parameters
    ----------
    name : str
        One of :data:`RESNET_NAMES`.
    source : {"torchvision", "timm"}
        Where the weights come from.
    base_url : str, optional
        A server (a mirror) to use instead of :data:`BASE_URLS` ``[source]``; the file's path
        on it stays the same.

    Returns
    -------
    str

    Raises
    ------
    ConfigError
        For an unknown name or source (a ``ValueError``, listing the valid ones).

    Examples
    --------
    >>> weights_url("resnet18")
    'https://download.pytorch.org/models/resnet18-f37072fd.pth'
    >>> weights_url("resnet18", source="timm", base_url="http://mirror:8000/hf")
    'http://mirror:8000/hf/timm/resnet18.a1_in1k/resolve/main/model.safetensors'
    """
    _check_name(name, source)
    remote, _ = _remote_file(name, source)
    return (base_url if base_url is not None else BASE_URLS[source]).rstrip("/") + "/" + remote


def fetch_weights(
    name: str,
    *,
    source: WeightSource = "torchvision",
    base_url: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout_s: float = 10.0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download ``name``'s ImageNet weights into the torch hub cache and return the file.

    Parameters
    ----------
    name : str
        One of :data:`RESNET_NAMES`.
    source : {"torchvision", "timm"}
        Which library's weights (see the module docstring).
    base_url : str, optional
        Download from this server instead of the source's (see :func:`weights_url`).
    cache_dir : path, optional
        Folder to save into (default: ``torch.hub.get_dir()/checkpoints``, which honours
        ``TORCH_HOME``).
    timeout_s : float, default 10
        Seconds to wait for the connection and for each read.
    overwrite : bool, default False
        Download again when the file is already there (else it is returned as it is).
    progress : callable, optional
        Called with ``(bytes done, bytes total)``; total is 0 when the server does not say.

    Returns
    -------
    Path
        The weights file; pass it as ``--encoder-weights`` (``train.model.encoder_weights``).

    Raises
    ------
    ConfigError
        For an unknown name or source.
    ModelError
        One line when the download fails (no network, HTTP error, interrupted, or bytes that do
        not match the hash in a torchvision file name), naming the URL and the way around it.
    """
    url = weights_url(name, source=source, base_url=base_url)
    _, file = _remote_file(name, source)
    folder = Path(cache_dir) if cache_dir is not None else _hub_checkpoints()
    target = folder / file
    if target.is_file() and not overwrite:
        logger.info("%s weights already in the cache: %s", name, target)
        return target
    ensure_output_dir(folder)
    fix = f"on a machine with internet, download {url}, copy the file here and pass --encoder-weights PATH"
    request = urllib.request.Request(url, headers={"User-Agent": "geopsp"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        raise ModelError(f"cannot download {name} weights from {url}: HTTP {exc.code} {exc.reason}; {fix}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(
            f"cannot download {name} weights from {url}: no network ({type(exc).__name__}: {reason}); {fix}"
        ) from exc
    expected = _HASH_IN_NAME.search(file) if source == "torchvision" else None
    digest = hashlib.sha256()
    with response, atomic_output(target, overwrite=True) as tmp:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        try:
            with tmp.open("wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except OSError as exc:
            raise ModelError(
                f"cannot download {name} weights from {url}: interrupted after {done} bytes "
                f"({type(exc).__name__}: {exc}); run again, or {fix}"
            ) from exc
        if total and done != total:
            raise ModelError(f"cannot download {name} weights from {url}: got {done} of {total} bytes; run again")
        if expected is not None and not digest.hexdigest().startswith(expected.group(1)):
            raise ModelError(
                f"downloaded {name} weights from {url} have sha256 {digest.hexdigest()[:12]}..., not "
                f"{expected.group(1)}... as the file name says; the download is corrupt or not that file, run again"
            )
    logger.info("downloaded %s weights (%d bytes, sha256 %s) to %s", name, done, digest.hexdigest()[:12], target)
    return target


def _check_name(name: str, source: str) -> None:
    if source not in BASE_URLS:
        raise ConfigError(f"unknown weights source {source!r}; choose one of {sorted(BASE_URLS)}")
    if name not in RESNET_NAMES:
        raise ConfigError(f"no downloadable weights for encoder {name!r}; choose one of {list(RESNET_NAMES)}")


def _hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"
