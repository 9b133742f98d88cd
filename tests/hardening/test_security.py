"""No one gets in: no unpickling of user files, no writes outside the output folder, no shell.

The source checks parse geopsp/ with :mod:`ast`, so comments and strings do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import geopsp
from geopsp.batch.jobs import discover_jobs, output_dir_for
from geopsp.config import load_config
from geopsp.errors import ConfigError, OutputError

SRC = Path(geopsp.__file__).parent

# Reviewed exceptions: (file, function) -> why it is safe.
ALLOWED_PICKLE = {
    ("vectorize/_strips.py", "unpack"): "bytes made by geopsp's own worker process (_pack), never read from a file",
    ("vectorize/_strips.py", "_pack"): "dumps only",
}


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call, str]]:
    """(dotted callee, call, enclosing function) for every call in ``tree``."""
    out: list[tuple[str, ast.Call, str]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if isinstance(child, ast.Call):
                out.append((ast.unparse(child.func), child, name))
            visit(child, name)

    visit(tree, "<module>")
    return out


def _kw(call: ast.Call, name: str) -> str | None:
    for k in call.keywords:
        if k.arg == name:
            return ast.unparse(k.value)
    return None


def _sources() -> list[tuple[str, ast.AST]]:
    return [(str(p.relative_to(SRC)), ast.parse(p.read_text(), str(p))) for p in sorted(SRC.rglob("*.py"))]


def test_no_unpickling_of_user_files(seen):
    bad = []
    for rel, tree in _sources():
        for callee, call, func in _calls(tree):
            where = f"{rel}:{call.lineno} {callee}"
            if callee in {
                "pickle.load",
                "pickle.loads",
                "pickle.Unpickler",
                "marshal.loads",
                "dill.load",
                "dill.loads",
            }:
                if (rel, func) not in ALLOWED_PICKLE:
                    bad.append(where)
            elif callee.endswith("torch.load") and _kw(call, "weights_only") != "True":
                bad.append(where)
            elif callee.endswith("np.load") or callee.endswith("numpy.load"):
                if _kw(call, "allow_pickle") not in (None, "False"):
                    bad.append(where)
            elif callee in {"yaml.load", "yaml.load_all"} and "Safe" not in (_kw(call, "Loader") or ""):
                bad.append(where)
            elif callee in {"yaml.unsafe_load", "yaml.full_load", "jsonpickle.decode", "joblib.load"}:
                bad.append(where)
    assert bad == [], bad
    seen("source check: pickle/torch.load/np.load/yaml.load", "no unsafe loader in geopsp/ (AST scan)")


# Test support by design: it starts loopback servers in background processes and points the
# environment at them (test credentials). No command imports it (checked below).
TEST_SUPPORT = {"testing_servers.py"}
# The QGIS plugin's runner exists to start geopsp as a child of QGIS (whose Python has no
# geopsp): one argument list, never a shell (shell=True is still refused there, below);
# `geopsp qgis install` reads only its constants (the config file's name and keys).
CHILD_RUNNERS = {"qgis_plugin/geopsp_processing/runner.py"}


def test_no_shell_or_environment_writes(seen):
    bad = []
    for rel, tree in _sources():
        if rel in TEST_SUPPORT:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                banned = {"pty"} if rel in CHILD_RUNNERS else {"subprocess", "pty"}
                bad += [f"{rel}:{node.lineno} imports {m}" for m in mods if m.split(".")[0] in banned]
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                bad += [f"{rel}:{node.lineno} writes os.environ" for t in targets if "os.environ" in ast.unparse(t)]
        for callee, call, _ in _calls(tree):
            if callee in {"os.system", "os.popen", "os.putenv", "os.environ.update", "os.environ.setdefault"} or (
                callee.startswith(("os.exec", "os.spawn"))
            ):
                bad.append(f"{rel}:{call.lineno} {callee}")
            if _kw(call, "shell") == "True":
                bad.append(f"{rel}:{call.lineno} shell=True")
            if callee in {"eval", "exec"}:
                bad.append(f"{rel}:{call.lineno} {callee}")
    assert bad == [], bad
    importers = [
        rel
        for rel, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(
            "testing_servers" in (a.name if isinstance(node, ast.Import) else node.module or "") for a in node.names
        )
        and rel not in TEST_SUPPORT
    ]
    assert importers == [], f"geopsp modules import the test servers: {importers}"
    seen("source check: subprocess/os.system/shell=True/eval/os.environ writes", "none in geopsp/ (AST scan)")


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("predict.compress=JPEG", "predict.compress"),
        ("predict.compress='deflate -co TILED=NO'", "predict.compress"),
        ("predict.creation_options={GDAL_HTTP_PROXY: evil}", "unknown key"),
        ("predict.gdal_env={CPL_DEBUG: 'ON'}", "unknown key"),
    ],
)
def test_gdal_options_are_whitelisted(cli, seen, override, expect):
    with pytest.raises(ConfigError, match=expect):
        load_config(overrides=[override])
    res = cli("config", "validate", "--set", override)
    assert res.code == 1 and expect in res.err, res.err
    seen(f"--set {override}", res.err)


def _lists(tmp_path: Path, scene: Path) -> tuple[Path, Path]:
    (tmp_path / "lists").mkdir()
    (tmp_path / "elsewhere").mkdir()
    import shutil

    shutil.copy(scene, tmp_path / "elsewhere" / "up.tif")
    shutil.copy(scene, tmp_path / "abs.tif")
    lst = tmp_path / "lists" / "scenes.txt"
    lst.write_text(f"../elsewhere/up.tif\n{tmp_path / 'abs.tif'}\n../lists/../elsewhere/up.tif\n")
    return lst, tmp_path / "out"


def test_list_file_paths_cannot_escape_the_output_folder(scene, tmp_path, seen):
    lst, out = _lists(tmp_path, scene)
    jobs = discover_jobs([lst])
    assert {j.scene.name for j in jobs} == {"up.tif", "abs.tif"}
    for job in jobs:
        folder = output_dir_for(out, job).resolve()
        assert folder == out.resolve() or out.resolve() in folder.parents
    seen("batch list file with ../ and absolute scene paths", "outputs keep only the file name, under --out")


@pytest.mark.parametrize("output", ["../../evil.tif", "/etc/evil.tif", "a/../../evil.tif", "..\\\\evil.tif"])
def test_manifest_output_column_cannot_escape(cli, bundle, scene, tmp_path, seen, output):
    lst = tmp_path / "scenes.csv"
    lst.write_text(f"scene,output\n{scene},{output}\n")
    with pytest.raises(OutputError, match="output directory"):
        discover_jobs([lst])
    res = cli("batch", lst, "--model", bundle, "--out", tmp_path / "out", "--workers", 1)
    assert res.code == 1 and "scenes.csv" in res.err and "output" in res.err, res.err
    assert not (tmp_path.parent / "evil.tif").exists() and not Path("/etc/evil.tif").exists()
    seen(f"batch CSV whose output column is {output!r}", res.err)


@pytest.mark.slow
def test_batch_cli_with_escaping_list_entries(cli, bundle, scene, tmp_path, seen):
    lst, out = _lists(tmp_path, scene)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    res = cli("batch", lst, "--model", bundle, "--out", out, "--workers", 1)
    assert res.code == 0, res.err
    created = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert created and all(out in p.parents for p in created), sorted(map(str, created))
    seen("geopsp batch on a list with ../ and absolute paths", res.err.strip().splitlines()[-1])
