"""``--progress json``: one JSON event per line on stderr (geopsp.cli.progress), and SIGTERM mid-run.

Real runs of the CLI on small synthetic scenes with the tiny bundle; the cancel test runs
``python -m geopsp`` in a subprocess and signals it once its first progress event arrives.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from geopsp.cli.progress import PROGRESS_SCHEMA, Reporter
from geopsp.testing import run_cli, small_scene


def _events(stderr: str) -> tuple[list[dict], list[str]]:
    """Split stderr into the JSON events and the plain lines."""
    events, plain = [], []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))  # every line that looks like JSON is one
        elif line.strip():
            plain.append(line)
    return events, plain


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_scene(tmp_path_factory.mktemp("scene"), name="small.tif")[0]


def test_predict_events_name_every_output_and_each_failed_scene(tiny_bundle, scene, tmp_path):
    missing = tmp_path / "missing.tif"
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "predict", scene, missing, "-m", tiny_bundle, "-o", out, "--vector", "--probabilities", "--progress", "json"
    )
    assert code == 1, stderr
    events, plain = _events(stderr)
    kinds = [e["event"] for e in events]
    # the bad scene is reported on its own, the good one runs, the command ends with the count
    first_error = events[kinds.index("error")]
    assert first_error["scene"] == str(missing) and str(missing) in first_error["message"]
    start = events[kinds.index("start")]
    assert start["command"] == "predict" and start["scene"] == str(scene) and start["schema"] == PROGRESS_SCHEMA
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] > 0 and progress[-1]["unit"] == "tiles"
    assert all(0 < p["done"] <= p["total"] for p in progress)
    device = next(e for e in events if e["event"] == "device")
    assert device["device"] == "cpu" and device["runtime"] in ("torch", "onnxruntime") and device["reason"]
    outputs = {e["name"]: e["path"] for e in events if e["event"] == "output"}
    assert {"classes", "qml", "probability", "vector", "summary"} <= set(outputs)
    assert sorted(outputs.values()) == sorted(stdout.split())  # the same files stdout lists
    assert all(Path(p).is_file() for p in outputs.values())
    summary = json.loads(Path(outputs["summary"]).read_text())
    assert summary["device"]["device"] == device["device"]
    assert events[-1] == {"event": "error", "message": "1 of 2 scenes failed"}
    # the human lines stay plain; one of them is the CLI's own error line for the bad scene
    assert f"Error: {first_error['message']}" in plain


def test_vectorize_and_evaluate_end_with_done(tiny_bundle, scene, tmp_path):
    code, _, err = run_cli("predict", scene, "-m", tiny_bundle, "-o", tmp_path / "p", "--no-progress")
    assert code == 0, err
    classes = tmp_path / "p" / "small_classes.tif"
    code, stdout, stderr = run_cli("vectorize", classes, "-o", tmp_path / "v.gpkg", "--progress", "json")
    assert code == 0, stderr
    events, _ = _events(stderr)
    assert events[0]["event"] == "start" and events[-1] == {"event": "done", "command": "vectorize"}
    outputs = {e["name"]: e["path"] for e in events if e["event"] == "output"}
    assert [outputs["vector"], outputs["vector_qml"]] == stdout.split() and Path(outputs["vector_qml"]).is_file()
    assert any(e["event"] == "progress" and e["unit"] == "rows" for e in events)

    # scored against itself: every pixel agrees
    code, _, stderr = run_cli("evaluate", classes, classes, "-o", tmp_path / "ev", "--progress", "json")
    assert code == 0, stderr
    events, _ = _events(stderr)
    outputs = {e["name"]: e["path"] for e in events if e["event"] == "output"}
    assert json.loads(Path(outputs["report"]).read_text())["overall_accuracy"] == 1.0
    assert {"classes_csv", "confusion_csv", "confusion_png"} <= set(outputs)
    assert events[-1]["event"] == "done"


def test_error_event_is_the_cli_error_line(tmp_path):
    code, _, stderr = run_cli("vectorize", tmp_path / "nope.tif", "-o", tmp_path / "v.gpkg", "--progress", "json")
    assert code == 1
    events, plain = _events(stderr)
    assert events[-1]["event"] == "error"
    assert plain[-1] == f"Error: {events[-1]['message']}"


def test_no_progress_and_progress_none_write_no_events(tiny_bundle, scene, tmp_path):
    code, _, err = run_cli("predict", scene, "-m", tiny_bundle, "-o", tmp_path / "a", "--progress", "none")
    assert code == 0 and not _events(err)[0]
    code, _, err = run_cli("predict", scene, "-m", tiny_bundle, "-o", tmp_path / "b", "--no-progress")
    assert code == 0 and not _events(err)[0]


def test_progress_events_are_throttled_but_keep_the_first_and_last():
    report = Reporter("json", command="t", interval_s=60)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), report.bar("x", unit="tiles") as progress:
        assert progress is not None
        for done in range(1, 1001):
            progress(done, 1000)
        progress(1000, 1000)  # a repeated last report is not repeated
    events, _ = _events(err.getvalue())
    assert [(e["done"], e["total"]) for e in events] == [(1, 1000), (1000, 1000)]


def test_sigterm_after_the_first_progress_event_leaves_nothing(tiny_bundle, tmp_path):
    big = small_scene(tmp_path / "scene", width=640, height=640, name="big.tif")[0]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geopsp", "predict", str(big), "-m", str(tiny_bundle), "-o", str(out)]
    cmd += ["--vector", "--batch-size", "1", "--progress", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # blocks until the child writes; it ends with the child
            lines.append(line)
            if line.startswith("{") and json.loads(line)["event"] == "progress":
                break
        else:
            pytest.fail(f"no progress event before the end: {''.join(lines)[-2000:]}")
        event = json.loads(lines[-1])
        assert event["done"] < event["total"], "the run finished before it could be cancelled"
        proc.send_signal(signal.SIGTERM)
        stdout, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines) + rest
    assert proc.returncode == 143, stderr[-2000:]
    assert stdout == ""  # stdout lists nothing: nothing was written
    events, plain = _events(stderr)
    assert events[-1]["event"] == "error" and events[-1]["cancelled"] is True
    assert plain[-1] == events[-1]["message"] and plain[-1].startswith("Terminated")
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert left == [], f"files left behind after SIGTERM: {left}"
