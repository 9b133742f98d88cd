"""Bad model bundles through the CLI (``predict --model`` and ``model info``) and the library.

A pickle is never executed: the payloads below would create a marker file if unpickled.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from geopsp.errors import CheckpointError
from geopsp.model.bundle import inspect_bundle, load_bundle

from .conftest import Result, final_outputs


def _rewrite_header(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    dst.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    return dst


class _Payload:
    """Unpickling this creates ``marker`` (the proof that a pickle was executed)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _bad_bundles(bundle: Path, d: Path, marker: Path) -> dict[str, Path]:
    data = bundle.read_bytes()
    out: dict[str, Path] = {}
    out["missing file"] = d / "missing.safetensors"
    (d / "empty.safetensors").write_bytes(b"")
    out["zero-byte file"] = d / "empty.safetensors"
    (d / "cut_header.safetensors").write_bytes(data[:1000])
    out["truncated in the header"] = d / "cut_header.safetensors"
    (d / "cut_weights.safetensors").write_bytes(data[: len(data) // 2])
    out["truncated in the weights"] = d / "cut_weights.safetensors"

    def newer(h: dict) -> None:
        h["__metadata__"]["format_version"] = "99"

    out["newer format version"] = _rewrite_header(bundle, d / "v99.safetensors", newer)

    def other_format(h: dict) -> None:
        h["__metadata__"]["format"] = "something-else/1"

    out["wrong format tag"] = _rewrite_header(bundle, d / "format.safetensors", other_format)

    def tamper(h: dict) -> None:
        meta = json.loads(h["__metadata__"]["geopsp"])
        meta["tile_size"] = 96
        h["__metadata__"]["geopsp"] = json.dumps(meta)

    out["tampered metadata JSON (digest mismatch)"] = _rewrite_header(bundle, d / "tampered.safetensors", tamper)

    def broken_json(h: dict) -> None:
        h["__metadata__"]["geopsp"] = h["__metadata__"]["geopsp"][:-5]

    out["metadata that is not JSON"] = _rewrite_header(bundle, d / "badjson.safetensors", broken_json)
    n = int.from_bytes(data[:8], "little")
    flipped = bytearray(data)
    flipped[8 + n + 100] ^= 0xFF
    (d / "weights.safetensors").write_bytes(bytes(flipped))
    out["one weight byte flipped"] = d / "weights.safetensors"
    (d / "pickle.safetensors").write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=4))
    out["a pickle with a payload, named .safetensors"] = d / "pickle.safetensors"
    with zipfile.ZipFile(d / "torch.pt", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
    out["a torch.save-style zip holding a pickle payload"] = d / "torch.pt"
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, dtype="float32")}, str(d / "plain.safetensors"))
    out["plain safetensors without geopsp metadata"] = d / "plain.safetensors"
    return out


CASES = [
    ("missing file", "check the path"),
    ("zero-byte file", "empty or truncated"),
    ("truncated in the header", "truncated"),
    ("truncated in the weights", "truncated"),
    ("newer format version", "upgrade geopsp"),
    ("wrong format tag", "not a geopsp bundle"),
    ("tampered metadata JSON (digest mismatch)", ""),
    ("metadata that is not JSON", "damaged"),
    ("one weight byte flipped", ""),
    ("a pickle with a payload, named .safetensors", "never unpickles"),
    ("a torch.save-style zip holding a pickle payload", "not a geopsp bundle"),
    ("plain safetensors without geopsp metadata", "not a geopsp bundle"),
]
HEADER_ONLY = {"tampered metadata JSON (digest mismatch)", "one weight byte flipped"}  # found when weights load


@pytest.fixture(scope="module")
def bad(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    d = tmp_path_factory.mktemp("badbundles")
    marker = d / "PWNED"
    return _bad_bundles(bundle, d, marker), marker


@pytest.mark.parametrize(("case", "fix"), CASES)
def test_predict_with_bad_bundle(cli, scene, bad, tmp_path, seen, case, fix):
    paths, marker = bad
    path = paths[case]
    res: Result = cli("predict", scene, "--model", path, "-o", tmp_path / "out", "--no-progress")
    assert res.code == 1, res.err
    line = res.err.strip()
    assert "\n" not in line and line.startswith(f"Error: {path}: ") and fix in line, line
    assert final_outputs(tmp_path / "out") == []
    assert not marker.exists(), "a pickle payload was executed"
    seen(f"bundle: {case} (predict --model)", line)
    with pytest.raises(CheckpointError, match=path.name):
        load_bundle(path)
    assert not marker.exists()


@pytest.mark.parametrize(("case", "fix"), [c for c in CASES if c[0] not in HEADER_ONLY])
def test_model_info_with_bad_bundle(cli, bad, seen, case, fix):
    paths, marker = bad
    path = paths[case]
    res = cli("model", "info", path)
    assert res.code == 1, res.err
    line = res.err.strip()
    assert "\n" not in line and line.startswith(f"Error: {path}: ") and fix in line, line
    assert not marker.exists(), "a pickle payload was executed"
    seen(f"bundle: {case} (model info)", line)
    with pytest.raises(CheckpointError):
        inspect_bundle(path)


def test_payload_really_would_run(tmp_path):
    """The payload is live: unpickling it (which geopsp never does) creates the marker."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_bundle_directory_model_info(cli, tmp_path, seen):
    d = tmp_path / "model.safetensors"
    d.mkdir()
    res = cli("model", "info", d)
    assert res.code == 1 and res.err.startswith(f"Error: {d}"), res.err
    seen("bundle: a directory (model info)", res.err)
