"""Fixtures of the hardening suite: a tiny untrained bundle, tiny scenes, and CLI runners.

``cli`` runs the real entry point (:func:`geopsp.cli.main.main`) in this process, which is
fast; ``cli_proc`` runs ``python -m geopsp`` in a subprocess for what needs a process of its
own (signals, concurrency). Both return a :class:`Result`.

``seen`` records what the user sees for each case; with ``GEOPSP_HARDENING_REPORT=FILE``
the records are written to FILE as JSON at the end of the session (``make_report.py``
turns them into docs/hardening.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPORT_ENV = "GEOPSP_HARDENING_REPORT"
_RECORDS: list[dict[str, str]] = []
_TMP_ROOTS: list[str] = []


@dataclass
class Result:
    """Exit code and captured output of one CLI run."""

    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.err.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def _code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def run_inprocess(argv: list[str]) -> Result:
    """Run ``geopsp ARGV`` through the real entry point in this process."""
    from geopsp.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    formatwarning = warnings.formatwarning
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("default")
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = _code(exc)
    import logging

    logging.captureWarnings(False)
    warnings.formatwarning = formatwarning
    return Result(code, out.getvalue(), err.getvalue())


def geopsp_cmd(*args: object) -> list[str]:
    """The command line of ``python -m geopsp ARGS``."""
    return [sys.executable, "-m", "geopsp", *(str(a) for a in args)]


def run_proc(args: list[object], *, timeout: float = 120, **kwargs: object) -> Result:
    """Run ``python -m geopsp ARGS`` in a subprocess."""
    proc = subprocess.run(geopsp_cmd(*args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli() -> Callable[..., Result]:
    """``cli("predict", scene, "-m", bundle, ...)`` runs the CLI in this process."""
    return lambda *args: run_inprocess(list(args))


@pytest.fixture
def cli_proc() -> Callable[..., Result]:
    """``cli_proc("predict", ...)`` runs ``python -m geopsp`` in a subprocess."""
    return lambda *args, **kw: run_proc(list(args), **kw)


@pytest.fixture(scope="session")
def hroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session folder for shared inputs."""
    root = tmp_path_factory.mktemp("hardening")
    _TMP_ROOTS.append(str(root.parent))
    return root


def _make_bundle(path: Path, *, dtype: str = "uint8", bands: int = 3, classes: int = 4) -> Path:
    import torch

    from geopsp.classes import ClassTable
    from geopsp.model.bundle import save_bundle
    from geopsp.model.meta import BundleMeta, Normalization
    from geopsp.model.registry import build_model, spec_from_preset

    spec = spec_from_preset("fast", encoder="resnet18", in_channels=bands, num_classes=classes, encoder_weights=None)
    meta = BundleMeta(
        spec=spec,
        classes=ClassTable.default(classes),
        bands=tuple(range(1, bands + 1)),
        band_names=tuple(f"band_{i}" for i in range(1, bands + 1)),
        input_dtype=dtype,
        normalization=Normalization.for_dtype(dtype, bands),
        tile_size=64,
        overlap=8,
        nodata=255,
        provenance={"trained": False},
    )
    torch.manual_seed(0)
    return save_bundle(build_model(spec), meta, path)


@pytest.fixture(scope="session")
def bundle(hroot: Path) -> Path:
    """An untrained ``fast``/resnet18 bundle: 3 uint8 bands, 4 classes, tile 64, overlap 8."""
    return _make_bundle(hroot / "fast_u8.safetensors")


@pytest.fixture(scope="session")
def bundle_f32(hroot: Path) -> Path:
    """The same for float32 scenes."""
    return _make_bundle(hroot / "fast_f32.safetensors", dtype="float32")


@pytest.fixture(scope="session")
def scene(hroot: Path) -> Path:
    """A 97x131 3-band uint8 synthetic scene (with labels next to it)."""
    from geopsp.testing import small_scene

    return small_scene(hroot, width=97, height=131)[0]


@pytest.fixture(scope="session")
def rgb() -> np.ndarray:
    """A random (3, 40, 50) uint8 array."""
    return (np.random.default_rng(0).random((3, 40, 50)) * 255).astype("uint8")


def final_outputs(folder: Path) -> list[str]:
    """Names in ``folder`` (recursively) that are not geopsp temporary files."""
    if not folder.exists():
        return []
    rels = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return sorted(str(r) for r in rels if not any(".geopsp-tmp-" in part for part in r.parts))


def messages(err: str) -> list[str]:
    """The non-blank lines of a run's stderr without the class areas table ``predict`` prints at the end."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if "Class areas:" in ln), None)
    if start is None:
        return lines
    end = next((i for i, ln in enumerate(lines) if ln.startswith("class areas table:")), len(lines) - 1)
    return lines[:start] + lines[end + 1 :]


def temp_outputs(folder: Path) -> list[str]:
    """Geopsp temporary files left in ``folder`` (recursively)."""
    if not folder.exists():
        return []
    return sorted({str(p.relative_to(folder)) for p in folder.rglob("*") if ".geopsp-tmp-" in p.name})


@pytest.fixture
def seen(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``seen(case, message)`` records what the user sees in a case for docs/hardening.md."""

    def record(case: str, message: str) -> None:
        _RECORDS.append({"case": case, "seen": message.strip(), "test": request.node.nodeid})

    return record


def _scrub(text: str) -> str:
    for root in sorted(_TMP_ROOTS, key=len, reverse=True):
        text = text.replace(root, "<tmp>")
    text = text.replace(str(Path(sys.executable)), "python")
    return text


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the records when ``GEOPSP_HARDENING_REPORT`` names a file."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    rows = [{**r, "seen": _scrub(r["seen"])} for r in _RECORDS]
    Path(target).write_text(json.dumps(rows, indent=1))


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    """Temporarily change the working directory."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
