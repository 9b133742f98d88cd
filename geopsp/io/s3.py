"""S3: where the endpoint is, for GDAL's ``/vsis3/`` and for boto3, from the environment alone.

The one home of "which S3 is meant". Credentials and the region come from the standard AWS
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_DEFAULT_REGION``), which GDAL and boto3 both read. An S3-compatible
server (MinIO, Ceph, moto) is named by boto3's ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``; GDAL does not read those, so :func:`gdal_options` translates them into
its own ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and ``AWS_VIRTUAL_HOSTING`` (path-style requests,
which every S3-compatible server answers). A user who sets GDAL's options keeps them.

Outputs bound for ``s3://`` go through :class:`S3Destination`: the ordinary local writers
write into a private staging folder that mirrors the destination, and once the whole set is
finished there it is uploaded object by object, the marker (a run's summary) last. An S3 PUT
(or the completion of a multipart upload) is atomic per object, so no final key ever holds a
half-written object; a failure during the uploads deletes the objects this set had already
uploaded, so no summary, and no member without it, is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from geopsp.errors import ConfigError, InputRasterError, OutputError, OutputExistsError

__all__ = [
    "S3Destination",
    "check_bucket",
    "client",
    "delete_objects",
    "download_file",
    "endpoint_url",
    "error_message",
    "gdal_options",
    "is_s3_uri",
    "list_objects",
    "object_exists",
    "read_object",
    "split_s3_uri",
    "upload_file",
]

logger = logging.getLogger(__name__)

_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")


def endpoint_url() -> str | None:
    """Return the S3 endpoint named in the environment (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def gdal_options() -> dict[str, str]:
    """GDAL config options that point ``/vsis3/`` at :func:`endpoint_url`; empty for AWS itself.

    Examples
    --------
    >>> import os
    >>> os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9000"
    >>> gdal_options()
    {'AWS_S3_ENDPOINT': '127.0.0.1:9000', 'AWS_HTTPS': 'NO', 'AWS_VIRTUAL_HOSTING': 'FALSE'}
    >>> del os.environ["AWS_ENDPOINT_URL"]
    """
    url = endpoint_url()
    if url is None or "AWS_S3_ENDPOINT" in os.environ:
        return {}
    parts = urlsplit(url)
    return {
        "AWS_S3_ENDPOINT": parts.netloc + parts.path.rstrip("/"),
        "AWS_HTTPS": "YES" if parts.scheme == "https" else "NO",
        "AWS_VIRTUAL_HOSTING": os.environ.get("AWS_VIRTUAL_HOSTING", "FALSE"),
    }


def is_s3_uri(path: object) -> bool:
    """Whether ``path`` is an ``s3://`` URI (a ``str``: a ``pathlib.Path`` cannot hold one).

    Examples
    --------
    >>> is_s3_uri("s3://bucket/prefix/"), is_s3_uri("out/a.tif")
    (True, False)
    """
    return isinstance(path, str) and path.startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/parts`` -> ``("bucket", "key/parts")``.

    Examples
    --------
    >>> split_s3_uri("s3://scenes/2024/a.tif")
    ('scenes', '2024/a.tif')
    """
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{uri}: not an s3://bucket/key URI")
    return parts.netloc, parts.path.lstrip("/")


def client() -> Any:
    """Make a boto3 S3 client for :func:`endpoint_url` (boto3 reads the credentials and region itself).

    Each client comes from a fresh boto3 session, so it reads the environment as it is now
    (boto3's default session keeps the credentials it found first).

    Raises
    ------
    ConfigError
        When boto3 is not installed (``pip install geopsp[s3]``).
    """
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError("s3:// needs boto3, which is not installed; pip install 'geopsp[s3]'") from exc
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url())


def error_message(uri: str, exc: BaseException) -> str:
    """One line for a failed S3 call on ``uri``: the status and code S3 gave, and what to check.

    Examples
    --------
    >>> class E(Exception):
    ...     response = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
    ...                 "ResponseMetadata": {"HTTPStatusCode": 403}}
    >>> error_message("s3://b/k.tif", E()).split(";")[0]
    's3://b/k.tif: S3 refused access (HTTP 403 AccessDenied: Access Denied)'
    """
    exc = _answered(exc)
    response = getattr(exc, "response", None)
    if type(exc).__name__ in _NO_CREDENTIALS:
        return f"{uri}: no S3 credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    if not isinstance(response, dict):
        return f"{uri}: cannot reach S3 ({exc}); check AWS_ENDPOINT_URL and the network"
    err = response.get("Error", {})
    code = str(err.get("Code", "")) or "error"
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    detail = f"HTTP {status}" + (f" {code}" if code != str(status) else "")  # HEAD answers carry no code
    detail += f": {err['Message']}" if err.get("Message") else ""
    if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return (
            f"{uri}: S3 refused access ({detail}); check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) "
            f"and the bucket policy"
        )
    if code in ("NoSuchBucket",):
        return f"{uri}: the bucket does not exist ({detail}); check the bucket name and AWS_ENDPOINT_URL"
    if status == 404 or code in ("NoSuchKey", "404"):
        return f"{uri}: no such object ({detail}); check the key"
    return f"{uri}: S3 request failed ({detail})"


def _answered(exc: BaseException) -> BaseException:
    """Find the S3 answer behind ``exc`` (boto3's transfers wrap a ``ClientError`` in ``S3UploadFailedError``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(getattr(seen, "response", None), dict):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def read_object(uri: str) -> bytes:
    """Read a small object (a STAC item) whole.

    Raises
    ------
    InputRasterError
        One line from :func:`error_message`.
    """
    bucket, key = split_s3_uri(uri)
    s3 = client()
    try:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError...
        raise InputRasterError(error_message(uri, exc)) from exc
    return body


# --- objects --------------------------------------------------------------------------------


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def check_bucket(uri: str, *, s3: Any = None) -> None:
    """Check, before any work, that the bucket of ``uri`` exists and these credentials may use it.

    Raises
    ------
    OutputError
        One line: the bucket does not exist, access is refused (403), S3 cannot be reached.
    """
    bucket, _ = split_s3_uri(uri)
    s3 = s3 if s3 is not None else client()
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception as exc:
        if _status(exc) == 404:  # HEAD answers without a body, so without the NoSuchBucket code
            raise OutputError(
                f"{uri}: the bucket {bucket!r} does not exist (HTTP 404); check the bucket name and AWS_ENDPOINT_URL"
            ) from exc
        raise OutputError(error_message(uri, exc)) from exc


def object_exists(uri: str, *, s3: Any = None) -> bool:
    """Whether an object is stored under ``uri`` (a HEAD request).

    Raises
    ------
    OutputError
        When S3 answers anything but the object or 404 (403, no bucket, unreachable).
    """
    bucket, key = split_s3_uri(uri)
    s3 = s3 if s3 is not None else client()
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _status(exc) == 404:
            return False
        raise OutputError(error_message(uri, exc)) from exc
    return True


def list_objects(uri: str, *, s3: Any = None) -> list[str]:
    """Every object URI whose key starts with ``uri``'s key (all pages of the listing).

    Raises
    ------
    OutputError
        One line from :func:`error_message`.
    """
    bucket, prefix = split_s3_uri(uri)
    s3 = s3 if s3 is not None else client()
    out: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(_uri(bucket, obj["Key"]) for obj in page.get("Contents", ()))
    except Exception as exc:
        raise OutputError(error_message(uri, exc)) from exc
    return out


def upload_file(path: str | os.PathLike[str], uri: str, *, s3: Any = None) -> None:
    """Upload a finished local file to ``uri``, in one PUT or as a multipart upload for big files.

    Either the whole object appears under ``uri`` or none does: a PUT is atomic, and boto3
    aborts a multipart upload that fails.

    Raises
    ------
    OutputError
        One line from :func:`error_message` (403, no such bucket, unreachable ...).
    """
    bucket, key = split_s3_uri(uri)
    s3 = s3 if s3 is not None else client()
    try:
        s3.upload_file(os.fspath(path), bucket, key)
    except Exception as exc:
        raise OutputError(error_message(uri, exc)) from exc


def download_file(uri: str, path: str | os.PathLike[str], *, s3: Any = None) -> Path:
    """Download the object ``uri`` into the local file ``path`` (its folder must exist).

    Raises
    ------
    OutputError
        One line from :func:`error_message`.
    """
    bucket, key = split_s3_uri(uri)
    s3 = s3 if s3 is not None else client()
    try:
        s3.download_file(bucket, key, os.fspath(path))
    except Exception as exc:
        raise OutputError(error_message(uri, exc)) from exc
    return Path(path)


def delete_objects(uris: Iterable[str], *, s3: Any = None) -> None:
    """Delete objects (absent ones are no error, as in S3), up to 1000 per request.

    Raises
    ------
    OutputError
        Naming the first object S3 would not delete.
    """
    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        bucket, key = split_s3_uri(uri)
        by_bucket.setdefault(bucket, []).append(key)
    if not by_bucket:
        return
    s3 = s3 if s3 is not None else client()
    for bucket, keys in by_bucket.items():
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            try:
                answer = s3.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            except Exception as exc:
                raise OutputError(error_message(_uri(bucket, batch[0]), exc)) from exc
            errors = answer.get("Errors") or []
            if errors:
                err = errors[0]
                raise OutputError(
                    f"{_uri(bucket, err.get('Key', ''))}: S3 would not delete it ({err.get('Code')}: "
                    f"{err.get('Message')}); check the bucket policy (s3:DeleteObject)"
                )


# --- a destination for a set of outputs -----------------------------------------------------


class S3Destination:
    """An ``s3://`` output location, written through a local staging folder and uploaded as a set.

    The staging folder mirrors the destination: the local path ``root / key`` stands for
    ``s3://bucket/key``, so the local writers and the output names (:func:`~geopsp.inference.plan.output_set`)
    work unchanged on :attr:`local`, and :meth:`uri_of` says where each file goes.

    Parameters
    ----------
    uri : str
        ``s3://bucket/prefix/`` (a folder, as a local ``--out``) or the key of one file
        (``s3://bucket/prefix/a_classes.tif``).
    root : str or os.PathLike
        The local staging folder (see :meth:`staged`).
    overwrite : bool, default False
        Replace existing objects; without it :meth:`check_absent` refuses them.

    Raises
    ------
    OutputError
        For a URI without a bucket, or a key with ``.``, ``..`` or empty parts (``a//b``),
        which a local folder cannot mirror.
    """

    def __init__(self, uri: str, root: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        try:
            self.bucket, self.key = split_s3_uri(uri)
        except ValueError as exc:
            raise OutputError(f"{exc}; give --out as s3://bucket/prefix/") from None
        parts = self.key.split("/")
        if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
            raise OutputError(
                f"{uri}: S3 output keys with '.', '..' or '//' parts are not supported; give s3://bucket/prefix/"
            )
        self.uri = uri
        self.root = Path(root)
        self.overwrite = overwrite

    @classmethod
    @contextlib.contextmanager
    def staged(cls, uri: str, *, overwrite: bool = False) -> Iterator[S3Destination]:
        """Yield a destination with a fresh private staging folder, removed when the block ends.

        The folder is made in the temporary directory (``TMPDIR``); it holds one set of
        outputs at a time. Staging folders of processes of this host that were killed are
        removed first.
        """
        from geopsp.io.atomic import TEMP_MARKER, left_by_dead_process, temp_prefix

        probe = cls(uri, ".", overwrite=overwrite)  # a bad URI is refused before anything is made
        base = Path(tempfile.gettempdir())
        with contextlib.suppress(OSError):
            for old in base.glob(f"{TEMP_MARKER}*-s3-*"):
                if old.is_dir() and left_by_dead_process(old):
                    shutil.rmtree(old, ignore_errors=True)
        root = Path(tempfile.mkdtemp(prefix=f"{temp_prefix()}s3-", dir=base))
        try:
            yield cls(probe.uri, root, overwrite=overwrite)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    @property
    def local(self) -> Path:
        """The local path standing for :attr:`uri` (give it to the local writers)."""
        return self.root / self.key if self.key else self.root

    def uri_of(self, path: str | os.PathLike[str]) -> str:
        """Return the ``s3://`` URI of a file in the staging folder.

        Examples
        --------
        >>> S3Destination("s3://maps/run1/", "/staging").uri_of("/staging/run1/a_classes.tif")
        's3://maps/run1/a_classes.tif'
        """
        rel = Path(path).relative_to(self.root).as_posix()
        return _uri(self.bucket, "" if rel == "." else rel)

    def check_absent(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Refuse, before any work, outputs that exist in S3 (unless ``overwrite``), and a bucket that cannot be used.

        Raises
        ------
        OutputExistsError
            Naming the first existing object and ``--overwrite``.
        OutputError
            The bucket does not exist, access is refused, S3 cannot be reached.
        """
        s3 = client()
        check_bucket(self.uri, s3=s3)
        if self.overwrite:
            return
        for p in paths:
            uri = self.uri_of(p)
            if object_exists(uri, s3=s3):
                raise OutputExistsError(f"{uri}: already exists; pass --overwrite (overwrite=True) to replace it")

    def upload(self, members: Sequence[str | os.PathLike[str]], *, marker: str | os.PathLike[str] | None) -> list[str]:
        """Upload finished staged files, ``marker`` last; on any failure remove what this call uploaded.

        With ``overwrite`` an older marker is deleted first, so that no moment shows it next
        to new members.

        Returns
        -------
        list of str
            The URIs, in upload order (the marker last).

        Raises
        ------
        OutputError
            One line naming the object that failed (403, no such bucket, unreachable ...);
            the objects already uploaded by this call were deleted again.
        """
        s3 = client()
        files = [Path(p) for p in members] + ([Path(marker)] if marker is not None else [])
        done: list[str] = []
        try:
            if self.overwrite and marker is not None:
                delete_objects([self.uri_of(marker)], s3=s3)
            for path in files:
                uri = self.uri_of(path)
                upload_file(path, uri, s3=s3)
                done.append(uri)
                logger.debug("uploaded %s", uri)
        except BaseException:
            self._remove(done, s3)
            raise
        return done

    def upload_all(self, *, marker: str | os.PathLike[str]) -> list[str]:
        """Upload every file of the staging folder, ``marker`` last (see :meth:`upload`)."""
        last = Path(marker)
        members = sorted(p for p in self.root.rglob("*") if p.is_file() and p != last)
        return self.upload(members, marker=last)

    @staticmethod
    def _remove(uris: Sequence[str], s3: Any) -> None:
        if not uris:
            return
        try:
            delete_objects(uris, s3=s3)
        except Exception as exc:  # the original failure is what the user needs to see
            logger.error("could not remove the incomplete set's objects %s (%s)", ", ".join(uris), exc)
