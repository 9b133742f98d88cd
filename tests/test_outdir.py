"""geopsp.io.outdir: the one place that creates and checks an output folder, and its callers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geopsp.errors import OutputError
from geopsp.io.outdir import ensure_output_dir


def test_creates_nested_folders_and_accepts_existing_ones(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    assert ensure_output_dir(out) == out and out.is_dir()
    assert ensure_output_dir(str(out)) == out


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"f: exists and is not a directory; choose another output directory"):
        ensure_output_dir(tmp_path / "f")
    with pytest.raises(OutputError, match=r"cannot create output directory \(Not a directory\)"):
        ensure_output_dir(tmp_path / "f" / "sub")


def test_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda *_args: False)  # as for a non-root user on a 0500 folder
    with pytest.raises(OutputError, match="output directory is not writable; choose a writable location"):
        ensure_output_dir(tmp_path)


def test_callers_share_the_check(tmp_path: Path) -> None:
    from geopsp.batch import Manifest, SceneRecord, run_batch
    from geopsp.io.atomic import check_output_path
    from geopsp.train.loop import _check_out

    (tmp_path / "f").write_text("x")
    file = tmp_path / "f"
    msg = "exists and is not a directory"
    with pytest.raises(OutputError, match=msg):
        run_batch([tmp_path / "a.tif"], tmp_path / "m.safetensors", file)
    with pytest.raises(OutputError, match=msg):
        _check_out(file, resume=False, overwrite=False)
    with pytest.raises(OutputError, match=msg):
        check_output_path(file / "x.tif")
    with pytest.raises(OutputError, match=msg):
        Manifest(file).append(SceneRecord(id="a", scene="a.tif", status="done"))
