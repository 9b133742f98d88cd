"""Scene names as users give them: local files, ``http(s)://`` and ``s3://`` URLs, GDAL ``/vsi…/`` paths, STAC items.

:func:`resolve_scene` is the one home of what a scene argument means. It returns a
:class:`SceneSource`: what the user typed (shown in messages), what GDAL opens and the name
outputs are named after. Remote rasters are read through GDAL's virtual file systems
(``/vsicurl/``, ``/vsis3/``) in the environment of :func:`gdal_env`: no directory listing
on open, HTTP range requests merged and issued in parallel, bounded retries and timeouts,
and the S3 endpoint of :mod:`geopsp.io.s3`. Block-aligned strip reads then fetch each byte
of a cloud-optimized GeoTIFF about once (``tests/test_remote.py`` counts them).

A STAC Item (a ``.json`` file or URL) is resolved by :mod:`geopsp.io.stac` into a virtual
scene (a GDAL VRT document) of the assets that hold the model's bands.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from geopsp.errors import InputRasterError

if TYPE_CHECKING:
    import rasterio

__all__ = [
    "SceneKind",
    "SceneSource",
    "Warp",
    "gdal_env",
    "is_remote",
    "read_uri",
    "remote_failure_message",
    "remote_gdal_options",
    "resolve_scene",
    "scene_name",
    "scene_stem",
]

SceneKind = Literal["local", "http", "s3", "vsi", "stac"]

_REMOTE_KINDS = ("http", "s3", "vsi", "stac")
_STAC_SUFFIXES = (".json", ".geojson")

# GDAL config for reading remote rasters; see https://gdal.org/user/virtual_file_systems.html
_REMOTE_GDAL = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the folder (and no sidecar probing)
    "GDAL_HTTP_MULTIRANGE": "YES",  # the ranges of one read requested in parallel
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # adjacent blocks as one request
    "GDAL_HTTP_MAX_RETRY": "3",  # 429 and 5xx retried...
    "GDAL_HTTP_RETRY_DELAY": "0.5",  # ...with a back-off from half a second
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "120",
    "CPL_VSIL_CURL_CHUNK_SIZE": str(256 * 1024),  # fewer round trips for tile-sized blocks
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 1024 * 1024),  # the header and recent blocks, bounded
    "VSI_CACHE": "FALSE",  # strips read each block once: a second per-handle cache only duplicates
}


@dataclass(frozen=True, slots=True)
class Warp:
    """The grid a scene is read on when it is not its own (``--resolution``, ``--crs``, ``--aoi``).

    Attributes
    ----------
    crs_wkt : str
    transform : tuple of float
        ``(a, b, c, d, e, f)`` of the north-up target transform.
    width, height : int
    resampling : str
        A ``rasterio.enums.Resampling`` name (:func:`geopsp.io.grid.resampling_for`).
    """

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    resampling: str


@dataclass(frozen=True, slots=True)
class SceneSource:
    """A scene: what the user named, and what GDAL opens for it.

    Attributes
    ----------
    given : str
        The scene as the user gave it (a path, URL, ``/vsi…/`` path or STAC item), used in messages.
    gdal_path : str
        What GDAL opens: a local path, a ``/vsicurl/`` or ``/vsis3/`` path, or a VRT document.
    kind : {"local", "http", "s3", "vsi", "stac"}
    name : str
        The file name outputs are named after and messages show (``a.tif``; a STAC item's id).
    local : Path or None
        The local file, for ``local`` scenes.
    warp : Warp or None
        Read on this grid instead of the scene's own (a ``WarpedVRT``; :mod:`geopsp.io.grid`).
    aoi_wkb : bytes or None
        Polygons (WKB, in the CRS the scene is read in) outside which every pixel is invalid.
    """

    given: str
    gdal_path: str
    kind: SceneKind
    name: str
    local: Path | None = None
    warp: Warp | None = None
    aoi_wkb: bytes | None = None

    @property
    def stem(self) -> str:
        """:attr:`name` without its suffix (a STAC item's id as it is)."""
        return self.name if self.kind == "stac" else PurePosixPath(self.name).stem

    @property
    def remote(self) -> bool:
        """Whether reading it goes through the network (or a GDAL virtual file system)."""
        return self.kind in _REMOTE_KINDS

    def viewed(self, warp: Warp | None, aoi_wkb: bytes | None) -> SceneSource:
        """Return the same scene read on another grid and/or masked to an area of interest."""
        return replace(self, warp=warp, aoi_wkb=aoi_wkb)

    def __str__(self) -> str:
        return self.given


def is_remote(scene: str | os.PathLike[str] | SceneSource) -> bool:
    """Whether a scene argument names something read over the network or a GDAL virtual file system.

    Examples
    --------
    >>> is_remote("https://example.com/a.tif"), is_remote("s3://b/a.tif"), is_remote("a/b.tif")
    (True, True, False)
    """
    if isinstance(scene, SceneSource):
        return scene.remote
    text = os.fspath(scene)
    return text.startswith("/vsi") or urlsplit(text).scheme in ("http", "https", "s3")


def resolve_scene(
    scene: str | os.PathLike[str] | SceneSource, *, bands: Mapping[int, str] | None = None
) -> SceneSource:
    """Say what a scene argument names and how GDAL opens it.

    Parameters
    ----------
    scene : str, os.PathLike or SceneSource
        A local raster, an ``http(s)://`` or ``s3://`` URL, a GDAL ``/vsi…/`` path, or a STAC
        Item (``.json``, local or remote). A :class:`SceneSource` is returned as it is.
    bands : mapping of int to str, optional
        The model's bands (scene band index -> name, :attr:`BundleMeta.named_bands`), to pick a
        STAC item's assets (:func:`geopsp.io.stac.stac_scene`).

    Returns
    -------
    SceneSource

    Examples
    --------
    >>> s = resolve_scene("https://example.com/cogs/a.tif?sig=1")
    >>> s.kind, s.gdal_path, s.name
    ('http', '/vsicurl/https://example.com/cogs/a.tif?sig=1', 'a.tif')
    >>> resolve_scene("s3://scenes/2024/b.tif").gdal_path
    '/vsis3/scenes/2024/b.tif'
    >>> resolve_scene("/vsizip/archive.zip/c.tif").kind
    'vsi'
    """
    if isinstance(scene, SceneSource):
        return scene
    text = os.fspath(scene)
    parts = urlsplit(text)
    if _is_stac(text):
        from geopsp.io.stac import stac_scene

        return stac_scene(text, bands=bands)
    if parts.scheme in ("http", "https"):
        return SceneSource(text, "/vsicurl/" + text, "http", PurePosixPath(parts.path).name or parts.netloc)
    if parts.scheme == "s3":
        return SceneSource(text, f"/vsis3/{parts.netloc}{parts.path}", "s3", PurePosixPath(parts.path).name)
    if text.startswith("/vsi"):
        return SceneSource(text, text, "vsi", PurePosixPath(text).name)
    if parts.scheme == "file":  # file:///abs/path (STAC asset links): the local file
        from urllib.request import url2pathname

        text = url2pathname(parts.path)
    if parts.scheme and len(parts.scheme) > 1 and "://" in text:
        raise InputRasterError(
            f"{text}: the {parts.scheme}:// scheme is not supported; give a local path, an http(s):// or s3:// "
            f"URL, or a GDAL /vsi…/ path"
        )
    p = Path(text)
    return SceneSource(str(p), str(p), "local", p.name, local=p)


def _is_stac(text: str) -> bool:
    """Tell a STAC item: a ``.json`` file or URL, or a STAC API item URL (``…/items/<id>`` without a file suffix)."""
    path = PurePosixPath(urlsplit(text).path)
    if path.suffix.lower() in _STAC_SUFFIXES:
        return True
    return urlsplit(text).scheme in ("http", "https") and path.parent.name == "items" and not path.suffix


def scene_name(scene: str | os.PathLike[str] | SceneSource) -> str:
    """Return the file name a scene shows in messages and tags, without opening or fetching anything.

    Examples
    --------
    >>> scene_name("https://h/cogs/a.tif?x=1"), scene_name("s3://b/k/c.tif"), scene_name("d/e.tif")
    ('a.tif', 'c.tif', 'e.tif')
    """
    if isinstance(scene, SceneSource):
        return scene.name
    text = os.fspath(scene)
    return PurePosixPath(urlsplit(text).path if "://" in text else text).name


def scene_stem(scene: str | os.PathLike[str] | SceneSource) -> str:
    """Return the stem outputs are named after (:attr:`SceneSource.stem`; a STAC item's id once resolved)."""
    if isinstance(scene, SceneSource):
        return scene.stem
    return PurePosixPath(scene_name(scene)).stem


def remote_failure_message(source: SceneSource, exc: Exception) -> str:
    """One line for a remote scene GDAL could not open: the HTTP/S3 status or the network failure, and the fix.

    Examples
    --------
    >>> s = resolve_scene("http://127.0.0.1:9/a.tif")
    >>> remote_failure_message(s, OSError("HTTP response code: 404"))
    'http://127.0.0.1:9/a.tif: not found (HTTP 404); check the URL'
    """
    detail = str(exc).replace(source.gdal_path, "").strip(" :'\"")
    low = detail.lower()
    code = re.search(r"http (?:response|error) code:? ?(\d{3})", low)
    status = int(code.group(1)) if code else None
    if status == 404 or any(k in low for k in ("does not exist in the file system", "nosuchkey", "key does not exist")):
        what = "no such object" if source.kind == "s3" else "not found"
        return f"{source}: {what} (HTTP 404); check the {'key' if source.kind == 's3' else 'URL'}"
    if "specified bucket does not exist" in low or "nosuchbucket" in low:
        return f"{source}: the bucket does not exist; check the bucket name and AWS_ENDPOINT_URL"
    if status in (401, 403) or "access denied" in low or "accessdenied" in low:
        fix = (
            "check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and the bucket policy"
            if source.kind == "s3"
            else "check the URL (a signed URL may have expired) or the server's access rules"
        )
        return f"{source}: access denied (HTTP {status or 403}); {fix}"
    if "aws_secret_access_key" in low and "not defined" in low:
        return (
            f"{source}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
            f"or AWS_NO_SIGN_REQUEST=YES for a public bucket"
        )
    if any(
        k in low
        for k in (
            "couldn't connect",
            "could not connect",
            "failed to connect",
            "resolve host",
            "connection refused",
            "timed out",
            "timeout",
        )
    ):
        return f"{source}: cannot reach the server ({detail}); check the URL, AWS_ENDPOINT_URL and the network"
    if status is not None:
        return f"{source}: the server answered HTTP {status}; check the URL"
    if "not recognized as" in low:
        return f"{source}: is not a raster GDAL can read ({detail}); check the URL names a GeoTIFF/COG"
    return f"{source}: cannot be opened ({detail}); check the URL and the network"


def remote_gdal_options() -> dict[str, str]:
    """GDAL config options for remote reads: the fixed ones above plus the S3 endpoint; the user's own win."""
    from geopsp.io import s3

    opts = {**_REMOTE_GDAL, **s3.gdal_options()}
    return {k: v for k, v in opts.items() if k not in os.environ}


@contextlib.contextmanager
def gdal_env(source: SceneSource, **options: Any) -> Iterator[rasterio.Env]:
    """Open a ``rasterio.Env`` for ``source``: :func:`remote_gdal_options` when it is remote, plus ``options``."""
    import rasterio

    extra = remote_gdal_options() if source.remote else {}
    with rasterio.Env(**{**extra, **options}) as env:
        yield env


def read_uri(uri: str, *, what: str = "file") -> bytes:
    """Read a small document (a STAC item) from a local path, an ``http(s)://`` URL or ``s3://``.

    Raises
    ------
    InputRasterError
        One line naming the URI and what failed (missing, unreachable, HTTP status, S3 error).
    """
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri, timeout=30) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as exc:
            raise InputRasterError(f"{uri}: the server answered HTTP {exc.code} ({exc.reason}); check the URL") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputRasterError(f"{uri}: cannot reach the server ({reason}); check the URL and the network") from exc
    if parts.scheme == "s3":
        from geopsp.io.s3 import read_object

        return read_object(uri)
    p = Path(uri)
    if not p.is_file():
        raise InputRasterError(f"{p}: no such {what}; check the path")
    return p.read_bytes()
