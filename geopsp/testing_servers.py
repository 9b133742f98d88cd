"""Loopback servers for tests and benchmarks: static files over HTTP with ranges, and S3 (moto).

Both listen on 127.0.0.1 only, on a free port, in a thread of the calling process, and count
what they serve so a test can check that a remote read fetches each byte about once.

>>> import tempfile, urllib.request
>>> from pathlib import Path
>>> root = Path(tempfile.mkdtemp()); _ = (root / "a.bin").write_bytes(b"0123456789")
>>> with RangeServer(root) as srv:
...     req = urllib.request.Request(srv.url("a.bin"), headers={"Range": "bytes=2-4"})
...     urllib.request.urlopen(req).read(), srv.bytes_served
(b'234', 3)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

__all__ = ["MotoS3Server", "RangeServer"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer:
    """Serve a folder over HTTP/1.1 on 127.0.0.1 with single ``Range`` requests (as S3 and CDNs do).

    Parameters
    ----------
    root : str or os.PathLike
        The folder served; ``url("a/b.tif")`` is ``root/a/b.tif``.
    ranges : bool, default True
        Honour ``Range`` headers; False answers every GET with the whole file (a server
        without range support).
    status : int, optional
        Answer every request with this status instead (e.g. 403).
    port : int, default 0
        The port to listen on; 0: a free one.

    Attributes
    ----------
    bytes_served : int
        Body bytes sent, all requests together.
    requests : collections.Counter
        ``(method, path)`` -> count.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, ranges: bool = True, status: int | None = None, port: int = 0
    ) -> None:
        self.root = Path(root)
        self.ranges = ranges
        self.status = status
        self.bytes_served = 0
        self.requests: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._httpd.server_address[1])

    def url(self, name: str = "") -> str:
        """Return the URL of a file under ``root``."""
        return f"http://127.0.0.1:{self.port}/{name.lstrip('/')}"

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.bytes_served = 0
            self.requests.clear()

    def _count(self, method: str, path: str, nbytes: int) -> None:
        with self._lock:
            self.bytes_served += nbytes
            self.requests[(method, path)] += 1

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _handler(server: RangeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, *, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if server.status is not None:
                self._empty(server.status, path)
                return
            target = (server.root / path.lstrip("/")).resolve()
            if server.root.resolve() not in target.parents or not target.is_file():
                self._empty(HTTPStatus.NOT_FOUND, path)
                return
            size = target.stat().st_size
            start, end, status = 0, size - 1, HTTPStatus.OK
            m = _RANGE.match(self.headers.get("Range", "")) if server.ranges else None
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # suffix range: the last N bytes
                    start = max(size - int(m.group(2)), 0)
                if start >= size:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    server._count(self.command, path, 0)
                    return
                status = HTTPStatus.PARTIAL_CONTENT
            n = end - start + 1
            self.send_response(status)
            self.send_header("Content-Type", "image/tiff" if target.suffix in (".tif", ".tiff") else "application/json")
            self.send_header("Content-Length", str(n))
            if server.ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                server._count(self.command, path, 0)
                return
            with target.open("rb") as f:
                f.seek(start)
                data = f.read(n)
            server._count(self.command, path, len(data))  # before sending: a client may look as soon as it has it
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # GDAL closes a stream it no longer needs
                pass

        def _empty(self, status: int, path: str) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            server._count(self.command, path, 0)

    return Handler


class MotoS3Server:
    """A real S3 API on 127.0.0.1 (moto's server mode), with the environment pointing at it.

    Entering sets ``AWS_ENDPOINT_URL`` (read by boto3 and, through
    :func:`geopsp.io.s3.gdal_options`, by GDAL's ``/vsis3/``) and test credentials unless the
    environment has its own; leaving restores the environment and stops the server.

    Requires ``moto[server]`` (a ``dev`` dependency). ``port`` 0 (the default) takes a free one.
    """

    _ENV: ClassVar[dict[str, str]] = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def __init__(self, *, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._saved: dict[str, str | None] = {}
        self.endpoint = ""

    def client(self, service: str = "s3") -> Any:
        """Make a boto3 client for the server (``"s3"``, or ``"iam"`` to make users)."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1")

    def user(self, name: str, policy: Mapping[str, Any]) -> dict[str, str]:
        """Make an IAM user with an inline ``policy``; return its credentials as environment variables.

        The policy binds only inside :meth:`enforcing_auth`.
        """
        iam = self.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    @contextlib.contextmanager
    def enforcing_auth(self) -> Iterator[None]:
        """Check signatures and IAM policies of every request meanwhile (moto's own switch).

        Unknown keys get 403 ``InvalidAccessKeyId``, requests a policy denies 403 ``AccessDenied``.
        """
        self._set_auth("0")
        try:
            yield
        finally:
            self._set_auth("inf")

    def _set_auth(self, count: str) -> None:
        req = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=10) as answer:
            answer.read()

    def __enter__(self) -> MotoS3Server:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        env = {**self._ENV, "AWS_ENDPOINT_URL": self.endpoint}
        for key, value in env.items():
            self._saved[key] = os.environ.get(key)
            if key == "AWS_ENDPOINT_URL" or key not in os.environ:
                os.environ[key] = value
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._server.stop()


# --------------------------------------------------------------------------- command line
# ``python -m geopsp.testing_servers http DIR --port 8765`` returns once the server listens and
# leaves it running in the background for ``--for`` seconds (the how-to pages use it to show
# remote reads without the internet); ``stop --port 8765`` ends it sooner.


def _pid_file(port: int) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"geopsp-test-server-{port}.pid"


def _serve(argv: list[str]) -> None:
    """Serve in the background process until killed or ``--for`` seconds pass."""
    import time

    kind, port, seconds = argv[0], int(argv[1]), float(argv[2])
    if kind == "http":
        with RangeServer(argv[3], port=port):
            _pid_file(port).write_text(str(os.getpid()))
            time.sleep(seconds)
        return
    with MotoS3Server(port=port):
        _pid_file(port).write_text(str(os.getpid()))
        time.sleep(seconds)


def main(argv: list[str] | None = None) -> int:
    """``http DIR --port P`` | ``s3 --port P [--bucket B --put FILE...]`` | ``stop --port P``."""
    import argparse
    import signal
    import socket
    import subprocess
    import sys
    import time

    parser = argparse.ArgumentParser(prog="python -m geopsp.testing_servers", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["http", "s3", "stop", "_serve"])
    parser.add_argument("root", nargs="*", default=["."])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--for", dest="seconds", type=float, default=600.0, help="stop after this many seconds")
    parser.add_argument("--bucket", default=None, help="s3: create this bucket")
    parser.add_argument("--put", nargs="*", default=[], help="s3: upload these files into --bucket")
    args = parser.parse_args(argv)
    if args.kind == "_serve":
        _serve(args.root)
        return 0
    if args.kind == "stop":
        pid_file = _pid_file(args.port)
        if pid_file.is_file():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            pid_file.unlink(missing_ok=True)
        return 0
    extra = [str(Path(args.root[0]).resolve())] if args.kind == "http" else []
    cmd = [sys.executable, "-m", "geopsp.testing_servers", "_serve", args.kind, str(args.port), str(args.seconds)]
    subprocess.Popen(
        [*cmd, *extra, "--port", str(args.port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", args.port)) == 0:
                break
        time.sleep(0.1)
    else:
        print(f"the {args.kind} server did not start on port {args.port}", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{args.port}"
    if args.kind == "s3" and args.bucket:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        )
        client.create_bucket(Bucket=args.bucket)
        for f in args.put:
            client.upload_file(f, args.bucket, Path(f).name)
    print(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
