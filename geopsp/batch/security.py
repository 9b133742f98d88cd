"""TLS between a batch client and its dask cluster: ``batch.tls`` to :class:`distributed.Security`.

dask's TLS is mutual: the scheduler and every worker hold certificates signed by one CA, and
so must each client; a peer without one is refused during the handshake. :func:`tls_security`
checks the files (one line naming a missing or unreadable one) and builds the ``Security``
(every role gets the same certificate, so a LocalCluster started with it uses TLS too);
:func:`scheduler_address` checks that an address and the settings agree.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from geopsp.config.schema import TLSConfig
from geopsp.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Security

__all__ = ["scheduler_address", "tls_security"]

_OPTIONS = {"ca_file": "--tls-ca-file", "cert": "--tls-cert", "key": "--tls-key"}


def tls_security(tls: TLSConfig) -> Security | None:
    """Build the dask ``Security`` of ``batch.tls``, or None when no TLS is configured.

    Parameters
    ----------
    tls : TLSConfig
        The CA file, this client's certificate and its key (PEM).

    Returns
    -------
    distributed.Security or None
        With ``require_encryption=True``; the client, scheduler and worker roles all use
        ``tls.cert`` and ``tls.key``.

    Raises
    ------
    ConfigError
        Naming the file that is missing or unreadable, or the CA or certificate that is not
        PEM (or whose key does not match).
    """
    if not tls.enabled:
        return None
    for name in ("ca_file", "cert", "key"):
        path = getattr(tls, name)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot read this TLS file ({exc.strerror or exc}); fix batch.tls.{name} or {_OPTIONS[name]}",
                key=f"batch.tls.{name}",
            ) from None
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{tls.ca_file}: not a PEM CA certificate ({exc.reason or exc})", key="batch.tls.ca_file"
        ) from None
    try:
        context.load_cert_chain(str(tls.cert), tls.key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{tls.cert}: not a PEM certificate with its key{f' {tls.key}' if tls.key else ''} ({exc.reason or exc})",
            key="batch.tls.cert",
        ) from None
    from distributed import Security

    files = {"cert": tls.cert, "key": tls.key}
    roles = {f"tls_{role}_{part}": path for role in ("client", "scheduler", "worker") for part, path in files.items()}
    return Security(  # type: ignore[no-untyped-call]
        require_encryption=True,
        tls_ca_file=tls.ca_file,
        **{k: v for k, v in roles.items() if v is not None},
    )


def scheduler_address(address: str, security: Security | None) -> str:
    """Return the address to connect to, checking it agrees with the TLS settings.

    Examples
    --------
    >>> scheduler_address("tcp://10.0.0.5:8786", None)
    'tcp://10.0.0.5:8786'
    >>> scheduler_address("tls://10.0.0.5:8786", None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geopsp.errors.ConfigError: batch.tls: scheduler tls://10.0.0.5:8786 uses TLS; pass --tls-ca-file, ...
    """
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    if security is None:
        if scheme == "tls":
            raise ConfigError(
                f"scheduler {address} uses TLS; pass --tls-ca-file, --tls-cert and --tls-key "
                "(batch.tls.ca_file, cert, key) with a certificate signed by the cluster's CA",
                key="batch.tls",
            )
        return address
    if scheme in ("", "tls"):
        return f"tls://{rest}"
    if scheme == "tcp":
        raise ConfigError(
            f"TLS settings are given but scheduler {address} is plain tcp://; use tls://{rest}", key="batch.scheduler"
        )
    return address  # another transport (ucx://, ws://...): dask says whether it can encrypt it
