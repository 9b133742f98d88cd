"""S3: where the endpoint is, for GDAL's ``/vsis3/`` and for boto3, from the environment alone.

The one home of "which S3 is meant". Credentials and the region come from the standard AWS
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_DEFAULT_REGION``), which GDAL and boto3 both read. An S3-compatible
server (MinIO, Ceph, moto) is named by boto3's ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``; GDAL does not read those, so :func:`gdal_options` translates them into
its own ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and ``AWS_VIRTUAL_HOSTING`` (path-style requests,
which every S3-compatible server answers). A user who sets GDAL's options keeps them.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from geopsp.errors import ConfigError, InputRasterError

__all__ = ["client", "endpoint_url", "error_message", "gdal_options", "read_object", "split_s3_uri"]


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

    Raises
    ------
    ConfigError
        When boto3 is not installed (``pip install geopsp[s3]``).
    """
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError("s3:// needs boto3, which is not installed; pip install 'geopsp[s3]'") from exc
    return boto3.client("s3", endpoint_url=endpoint_url())


def error_message(uri: str, exc: Exception) -> str:
    """One line for a failed S3 call on ``uri``: the status and code S3 gave, and what to check.

    Examples
    --------
    >>> class E(Exception):
    ...     response = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
    ...                 "ResponseMetadata": {"HTTPStatusCode": 403}}
    >>> error_message("s3://b/k.tif", E()).split(";")[0]
    's3://b/k.tif: S3 refused access (HTTP 403 AccessDenied: Access Denied)'
    """
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return f"{uri}: cannot reach S3 ({exc}); check AWS_ENDPOINT_URL and the network"
    err = response.get("Error", {})
    code = str(err.get("Code", "")) or "error"
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    detail = f"HTTP {status} {code}" + (f": {err['Message']}" if err.get("Message") else "")
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
