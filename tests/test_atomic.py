import os
from pathlib import Path

import pytest

from geopsp.errors import OutputError, OutputExistsError
from geopsp.io.atomic import TEMP_MARKER, atomic_output, check_output_path


def test_output_equal_to_input_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "in.tif"
    src.write_bytes(b"scene")
    with pytest.raises(OutputError, match="equals input"):
        check_output_path(src, overwrite=True, inputs=[src])
    # through a different spelling of the same file
    with pytest.raises(OutputError, match="equals input"):
        check_output_path(tmp_path / "." / "in.tif", overwrite=True, inputs=[str(src)])
    assert src.read_bytes() == b"scene"


def test_existing_output_not_clobbered_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_output(out) as tmp:
            tmp.write_text("new")
    assert out.read_text() == "old"
    with atomic_output(out, overwrite=True) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new"


def test_failure_leaves_nothing_under_final_name(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.tif"
    with pytest.raises(RuntimeError):
        with atomic_output(out, sidecars=[".aux.xml"]) as tmp:
            assert tmp.parent == out.parent and tmp.suffix == ".tif"
            tmp.write_text("partial")
            Path(str(tmp) + ".aux.xml").write_text("side")
            raise RuntimeError("boom")
    assert not out.exists()
    assert [p for p in out.parent.iterdir() if p.name.startswith(TEMP_MARKER)] == []


def test_sidecars_renamed_with_main_file(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    with atomic_output(out, sidecars=[".aux.xml"]) as tmp:
        tmp.write_text("main")
        Path(str(tmp) + ".aux.xml").write_text("side")
    assert out.read_text() == "main"
    assert Path(str(out) + ".aux.xml").read_text() == "side"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(d / "x.tif")
    finally:
        d.chmod(0o700)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_finished_outputs_get_the_umask_permissions(tmp_path: Path, umask: int) -> None:
    """safetensors creates its file 0600: a bundle would be unreadable to the dask workers."""
    import torch
    from safetensors.torch import save_file

    out = tmp_path / "model.safetensors"
    old = os.umask(umask)
    try:
        with atomic_output(out, sidecars=[".json"]) as tmp:
            save_file({"w": torch.zeros(3)}, str(tmp))
            side = Path(str(tmp) + ".json")
            side.write_text("{}")
            side.chmod(0o600)
            written = tmp.stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert written == 0o600  # what safetensors does on its own
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert Path(str(out) + ".json").stat().st_mode & 0o777 == 0o666 & ~umask
