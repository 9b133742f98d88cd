import os
import signal
import sys
from pathlib import Path

import pytest

from geopsp.errors import OutputError, OutputExistsError
from geopsp.io.atomic import TEMP_MARKER, StagedOutputs, atomic_output, check_output_path


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


# ------------------------------------------------------------------------------ no-replace rename


def _renameat2_einval() -> object:
    """A renameat2 whose file system does not support RENAME_NOREPLACE (as some answer: EINVAL)."""
    import ctypes
    import errno

    def fn(*args: object) -> int:
        ctypes.set_errno(errno.EINVAL)
        return -1

    return fn


@pytest.mark.parametrize("how", ["renameat2", "einval_then_link", "link"])
def test_rename_noreplace_refuses_a_target_made_after_the_check(tmp_path, monkeypatch, how):
    from geopsp.io import atomic

    if how == "renameat2" and atomic._libc_renameat2() is None:
        pytest.skip("no renameat2 in this C library")
    if how == "einval_then_link":
        monkeypatch.setattr(atomic, "_renameat2", _renameat2_einval())
    elif how == "link":
        monkeypatch.setattr(atomic, "_renameat2", False)
    src, dst = tmp_path / "tmp.tif", tmp_path / "out.tif"
    src.write_text("ours")
    assert not dst.exists()  # the check passes ...
    dst.write_text("theirs")  # ... then another run finishes the same output
    with pytest.raises(FileExistsError):
        atomic.rename_noreplace(src, dst)
    assert dst.read_text() == "theirs" and src.read_text() == "ours"
    dst.unlink()
    atomic.rename_noreplace(src, dst)
    assert dst.read_text() == "ours" and not src.exists()


def test_renameat2_is_found_on_linux_glibc():
    import platform

    from geopsp.io import atomic

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("renameat2 is looked up on Linux/glibc only")
    assert atomic._libc_renameat2() is not None


# ------------------------------------------------------------------------------ sets of outputs


class _Spy:
    """Records fsyncs (by the path of the descriptor) and renames into place, and calls the real ones."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from geopsp.io import atomic

        self.events: list[tuple[str, str]] = []
        self.before_first_rename: list[object] = []
        real_fsync, real_rename = os.fsync, atomic.rename_noreplace

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def rename(src: object, dst: object) -> None:
            for hook in self.before_first_rename:
                hook()  # type: ignore[operator]
            self.before_first_rename.clear()
            real_rename(src, dst)  # type: ignore[arg-type]
            self.events.append(("rename", str(dst)))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(atomic, "rename_noreplace", rename)


def _staged(outputs: StagedOutputs, folder: Path, names: list[str], marker: str) -> None:
    for name in names:
        outputs.temp(folder / name).write_text(f"new {name}")
    outputs.temp(folder / marker, marker=True).write_text("{}")


def test_commit_syncs_each_file_before_its_rename_and_the_folder_before_the_marker(tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    with StagedOutputs() as outputs:
        _staged(outputs, tmp_path, ["a.tif", "a.qml"], "a_summary.json")
        tmps = {str(outputs.staged(tmp_path / n)): n for n in ["a.tif", "a.qml", "a_summary.json"]}
        assert [p.name for p in outputs.commit()] == ["a.tif", "a.qml", "a_summary.json"]
    ev = spy.events
    renames = [Path(p).name for kind, p in ev if kind == "rename"]
    assert renames == ["a.tif", "a.qml", "a_summary.json"]  # the marker last
    for tmp, name in tmps.items():
        assert ev.index(("fsync", tmp)) < ev.index(("rename", str(tmp_path / name)))
    folder = ("fsync", str(tmp_path))
    synced = [i for i, e in enumerate(ev) if e == folder]
    assert synced and ev.index(("rename", str(tmp_path / "a.qml"))) < synced[0]
    assert synced[0] < ev.index(("rename", str(tmp_path / "a_summary.json"))) < synced[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.qml", "a.tif", "a_summary.json"]


def test_commit_refuses_an_output_made_by_another_run_meanwhile_and_leaves_none_of_the_set(tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    theirs = tmp_path / "a.qml"
    # another run finishes a.qml after the checks, just before our first rename
    spy.before_first_rename.append(lambda: theirs.write_text("theirs"))
    with StagedOutputs() as outputs:
        _staged(outputs, tmp_path, ["a.tif", "a.qml"], "a_summary.json")
        with pytest.raises(OutputExistsError, match=r"a\.qml.*--overwrite"):
            outputs.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.qml"]  # a.tif was placed, then taken back
    assert theirs.read_text() == "theirs"


def test_failed_overwrite_restores_the_previous_set(tmp_path):
    for name in ["a.tif", "a_summary.json"]:
        (tmp_path / name).write_text(f"old {name}")
    with StagedOutputs(overwrite=True) as outputs:
        _staged(outputs, tmp_path, ["a.tif", "b.tif"], "a_summary.json")
        (tmp_path / "b.tif").mkdir()  # made meanwhile: a folder is never replaced
        with pytest.raises(OutputError, match=r"b\.tif: is a directory"):
            outputs.commit()
    assert (tmp_path / "a.tif").read_text() == "old a.tif"
    assert (tmp_path / "a_summary.json").read_text() == "old a_summary.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "a_summary.json", "b.tif"]


def test_overwrite_replaces_the_set_and_removes_what_it_was_told_to(tmp_path):
    for name in ["a.tif", "a.tif.ovr", "a_summary.json"]:
        (tmp_path / name).write_text(f"old {name}")
    with StagedOutputs(overwrite=True) as outputs:
        _staged(outputs, tmp_path, ["a.tif"], "a_summary.json")
        outputs.remove(tmp_path / "a.tif.ovr")
        outputs.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "a_summary.json"]
    assert (tmp_path / "a.tif").read_text() == "new a.tif"


def test_leaving_the_block_without_commit_removes_the_temporaries(tmp_path):
    with pytest.raises(RuntimeError), StagedOutputs() as outputs:
        _staged(outputs, tmp_path, ["a.tif"], "a_summary.json")
        raise RuntimeError("vectorize failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_renames_is_delivered_once_the_set_is_in_place(tmp_path, monkeypatch, sig):
    class Stop(BaseException):
        pass

    def on_term(signum: int, frame: object) -> None:
        raise Stop

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        spy = _Spy(monkeypatch)
        spy.before_first_rename.append(lambda: os.kill(os.getpid(), sig))
        with StagedOutputs() as outputs:
            _staged(outputs, tmp_path, ["a.tif", "a.qml"], "a_summary.json")
            with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else Stop):
                outputs.commit()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.qml", "a.tif", "a_summary.json"]
        assert signal.getsignal(signal.SIGTERM) is on_term
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_atomic_output_refuses_an_output_made_meanwhile(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    spy = _Spy(monkeypatch)
    spy.before_first_rename.append(lambda: out.write_text("theirs"))
    with pytest.raises(OutputExistsError, match="another process"):
        with atomic_output(out) as tmp:
            tmp.write_text("ours")
    assert out.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


SIGTERM_DEFAULT = """
import os, signal, sys
from pathlib import Path
from geopsp.io import atomic

real = atomic.rename_noreplace
def rename(src, dst):
    real(src, dst)
    os.kill(os.getpid(), signal.SIGTERM)  # no handler: the default action terminates
atomic.rename_noreplace = rename
with atomic.StagedOutputs() as outputs:
    for name in ["a.tif", "a.qml"]:
        outputs.temp(Path(sys.argv[1], name)).write_text(name)
    outputs.temp(Path(sys.argv[1], "a_summary.json"), marker=True).write_text("{}")
    outputs.commit()
print("not reached")
"""


def test_sigterm_without_a_handler_terminates_after_the_set_is_in_place(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-c", SIGTERM_DEFAULT, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert "not reached" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.qml", "a.tif", "a_summary.json"]
