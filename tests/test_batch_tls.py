"""A cluster no one else can enter: a TLS ``dask scheduler`` and ``dask worker`` on 127.0.0.1, certificates made here.

The scheduler and the worker are started with the commands the batch how-to shows; a batch
given the CA and a client certificate runs on them, while a client without a certificate, or
with one from another CA, is refused by the scheduler during the TLS handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from geopsp.config import load_config
from geopsp.errors import ConfigError
from geopsp.testing import run_cli

pytestmark = [pytest.mark.dask, pytest.mark.timeout(300)]

pytest.importorskip("distributed")
pytest.importorskip("cryptography")

DASK = Path(sys.executable).with_name("dask")


@dataclass
class Pki:
    ca: Path
    certs: dict[str, tuple[Path, Path]]  # role -> (certificate, key)

    def args(self, role: str) -> list[str]:
        cert, key = self.certs[role]
        return ["--tls-ca-file", str(self.ca), "--tls-cert", str(cert), "--tls-key", str(key)]

    def security(self, role: str = "client"):
        from distributed import Security

        cert, key = self.certs[role]
        return Security(
            tls_ca_file=str(self.ca), tls_client_cert=str(cert), tls_client_key=str(key), require_encryption=True
        )


def make_pki(folder: Path, roles: tuple[str, ...]) -> Pki:
    """A CA and one certificate per role signed by it (EC P-256, valid for a day, for 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.write_bytes(pem)
        return path

    def sign(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = f"geopsp test CA {folder.name}"
    ca = folder / "ca.pem"
    ca.write_bytes(sign(ca_name, ca_key, ca_name, ca_key, ca=True).public_bytes(serialization.Encoding.PEM))
    certs = {}
    for role in roles:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = folder / f"{role}.pem"
        cert.write_bytes(sign(role, key, ca_name, ca_key, ca=False).public_bytes(serialization.Encoding.PEM))
        certs[role] = (cert, write_key(key, folder / f"{role}.key"))
    return Pki(ca, certs)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ("scheduler", "worker", "client"))


@pytest.fixture(scope="module")
def intruder(tmp_path_factory) -> Pki:
    """Someone else's CA and client certificate."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), ("client",))


@pytest.fixture(scope="module")
def tls_scheduler(pki, tmp_path_factory) -> Iterator[str]:
    """``dask scheduler`` and one ``dask worker`` over TLS on 127.0.0.1; yields the tls:// address."""
    from distributed import Client

    root = tmp_path_factory.mktemp("tls-cluster")
    sched_file = root / "scheduler.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs: list[subprocess.Popen] = []
    logs = [open(root / "scheduler.log", "wb"), open(root / "worker.log", "wb")]
    try:
        procs.append(subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--protocol", "tls", "--port", "0", "--no-dashboard",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file), *pki.args("scheduler")],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env,
        ))  # fmt: skip
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip().endswith("}"):
            assert procs[0].poll() is None, (root / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "scheduler did not start"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        procs.append(subprocess.Popen(
            [str(DASK), "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
             "--dashboard-address", "127.0.0.1:0", "--death-timeout", "30", *pki.args("worker")],
            stdout=logs[1], stderr=subprocess.STDOUT, env=env,
        ))  # fmt: skip
        with Client(address, security=pki.security(), timeout=30, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
        # dask's HTTP servers listen on every interface unless told otherwise, --no-dashboard or not
        psutil = pytest.importorskip("psutil")
        listening = {
            c.laddr.ip for p in procs for c in psutil.Process(p.pid).net_connections("inet") if c.status == "LISTEN"
        }
        assert listening == {"127.0.0.1"}
        yield address
    finally:
        for proc in procs[::-1]:
            proc.terminate()
        for proc in procs[::-1]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from geopsp.synthetic import make_scene

    root = tmp_path_factory.mktemp("tls-scene")
    make_scene(root / "a.tif", width=80, height=64, bands=3, seed=4, labels_path=root / "labels.tif")
    return root / "a.tif"


# ---------------------------------------------------------------- tests


def test_batch_runs_on_a_tls_cluster_given_the_ca_and_a_client_certificate(
    tls_scheduler, pki, tiny_bundle, scene, tmp_path
):
    out = tmp_path / "out"
    code, _, err = run_cli(
        "batch", scene, "--model", tiny_bundle, "--out", out, "--scheduler", tls_scheduler, *pki.args("client")
    )
    assert code == 0, err
    assert err.splitlines()[-1] == f"1 scene: 1 done (see {out / 'manifest.jsonl'})"
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["status"] == "done"
    assert record["worker"].startswith("tls://127.0.0.1:")
    assert (out / "a_classes.tif").is_file()


def test_a_client_without_the_clusters_certificate_is_refused(
    tls_scheduler, pki, intruder, tiny_bundle, scene, tmp_path
):
    from distributed import Client

    from geopsp.batch import run_batch
    from geopsp.config.schema import BatchConfig, GeopspConfig, TLSConfig

    host, port = urlparse(tls_scheduler).hostname, urlparse(tls_scheduler).port

    def first_byte(context: ssl.SSLContext) -> bytes:
        """Open TLS to the scheduler and read: a peer it accepts gets dask's handshake message first."""
        context.check_hostname = False
        with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
            return tls.recv(1)  # TLS 1.3: the server's verdict on the client's certificate comes after the handshake

    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(*map(str, pki.certs["client"]))
    assert first_byte(with_cert) != b""
    # No certificate at all: the client trusts the scheduler, the scheduler drops the client.
    with pytest.raises(ssl.SSLError):
        first_byte(ssl.create_default_context(cafile=str(pki.ca)))
    # A certificate from another CA, through dask and through geopsp.
    with pytest.raises(OSError):
        Client(tls_scheduler, security=intruder.security(), timeout=2, set_as_default=False)
    cert, key = intruder.certs["client"]
    cfg = GeopspConfig(
        batch=BatchConfig(connect_timeout_s=2, tls=TLSConfig(ca_file=str(pki.ca), cert=str(cert), key=str(key)))
    )
    with pytest.raises(
        ConfigError, match=rf"cannot reach dask scheduler {tls_scheduler} .*check that its CA signed --tls-cert"
    ):
        run_batch([scene], tiny_bundle, tmp_path / "out", config=cfg, scheduler=tls_scheduler)
    # No TLS settings for a tls:// address: one line, nothing sent.
    code, _, err = run_cli(
        "batch", scene, "--model", tiny_bundle, "--out", tmp_path / "o2", "--scheduler", tls_scheduler
    )
    assert code == 1
    assert err.splitlines() == [
        f"Error: batch.tls: scheduler {tls_scheduler} uses TLS; pass --tls-ca-file, --tls-cert and --tls-key "
        "(batch.tls.ca_file, cert, key) with a certificate signed by the cluster's CA"
    ]


def test_tls_files_that_cannot_be_used_are_one_line_naming_the_file(pki, tiny_bundle, scene, tmp_path):
    cert, key = pki.certs["client"]
    base = ["batch", scene, "--model", tiny_bundle, "--out", tmp_path / "out", "--scheduler", "tls://127.0.0.1:9"]
    missing = tmp_path / "missing.pem"
    code, _, err = run_cli(*base, "--tls-ca-file", pki.ca, "--tls-cert", missing, "--tls-key", key)
    assert (code, err.splitlines()) == (1, [
        f"Error: batch.tls.cert: {missing}: cannot read this TLS file (No such file or directory); "
        "fix batch.tls.cert or --tls-cert"
    ])  # fmt: skip
    code, _, err = run_cli(*base, "--tls-ca-file", key, "--tls-cert", cert, "--tls-key", key)
    assert code == 1 and err.startswith(f"Error: batch.tls.ca_file: {key}: not a PEM CA certificate")
    _, other_key = make_pki(tmp_path / "other", ("client",)).certs["client"]
    code, _, err = run_cli(*base, "--tls-ca-file", pki.ca, "--tls-cert", cert, "--tls-key", other_key)
    assert code == 1 and err.startswith(
        f"Error: batch.tls.cert: {cert}: not a PEM certificate with its key {other_key}"
    )
    code, _, err = run_cli(*base, "--tls-cert", cert)
    assert code == 1 and "batch.tls: TLS needs ca_file and cert (key unless appended to cert), got only cert" in err
    code, _, err = run_cli(*base[:-1], "tcp://127.0.0.1:9", *pki.args("client"))
    assert code == 1 and "scheduler tcp://127.0.0.1:9 is plain tcp://; use tls://127.0.0.1:9" in err
    assert not (tmp_path / "out" / "a_classes.tif").exists()


def test_tls_paths_in_a_config_file_are_relative_to_it(pki, tmp_path, monkeypatch):
    config = pki.ca.parent / "batch.yaml"
    config.write_text(
        "batch:\n  tls:\n    ca_file: ca.pem\n    cert: client.pem\n    key: client.key\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    tls = load_config(config).batch.tls
    assert (tls.ca_file, tls.cert, tls.key) == tuple(
        str(pki.ca.parent / n) for n in ("ca.pem", "client.pem", "client.key")
    )


def test_a_local_cluster_given_tls_settings_speaks_only_tls(pki):
    from distributed import Client

    from geopsp.batch.cluster import connect, plan_cluster
    from geopsp.config.schema import BatchConfig, GeopspConfig, TLSConfig

    cert, key = pki.certs["client"]  # one certificate for every role of the local cluster
    tls = TLSConfig(ca_file=str(pki.ca), cert=str(cert), key=str(key))
    cfg = GeopspConfig(batch=BatchConfig(n_workers=1, tls=tls, dashboard_address=None))
    with connect(plan_cluster(cfg), cfg) as (client, _):
        info = client.scheduler_info()
        assert info["address"].startswith("tls://127.0.0.1:")
        assert all(a.startswith("tls://127.0.0.1:") for a in info["workers"])
        with pytest.raises(OSError):  # plain TCP is not spoken there
            Client(info["address"].replace("tls://", "tcp://"), timeout=2, set_as_default=False)
