#!/usr/bin/python3
"""Drive geopsp's installed QGIS Processing provider in a real, headless QGIS.

Runs under the *system* Python, where Debian's ``python3-qgis`` lives; it imports nothing
from geopsp (the plugin runs geopsp in the environment recorded by ``geopsp qgis install``):

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/qgis_processing_check.py \
        --plugins-dir PROFILE/python/plugins --model m.safetensors --scene small.tif \
        --labels small_labels.tif --big-scene big.tif --expect classes.json --work DIR \
        [--screenshot docs/img/qgis_processing.png]

What it does, as QGIS does it:

1. starts QGIS and Processing, imports the installed plugin (``classFactory``) and registers
   its provider (``initProcessing``);
2. ``geopsp:segment`` on ``--scene`` (polygons and probabilities on), then loads the
   results as the GUI does (``handleAlgorithmResults``) into a project and reads their
   renderers: the class raster must be paletted and the GeoPackage categorized by
   ``class_id``, both with the ``--expect`` classes and colours;
3. ``geopsp:vectorize`` of the class raster into a GeoPackage loaded the same way;
4. ``geopsp:evaluate`` of the class raster against ``--labels``;
5. the same segment again without OVERWRITE: it must fail with geopsp's one-line error;
6. ``geopsp:segment`` on ``--big-scene``, cancelled from the first progress report: it must
   raise, and leave nothing in its output folder;
7. with ``--screenshot``, grabs the algorithm dialog of ``geopsp:segment`` (offscreen).

Prints a JSON report on stdout; exit status 0 when every check passed, 1 otherwise, 2 when
QGIS or the plugin cannot start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any


def _start_qgis() -> Any:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="qgis-runtime-"))
    from qgis.core import QgsApplication

    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], True)  # GUI enabled: the algorithm dialog is a widget (offscreen)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")  # Processing itself
    from processing.core.Processing import Processing

    Processing.initialize()
    return app


def _register(plugins_dir: str) -> Any:
    """Import the installed plugin as QGIS does and register its provider."""
    from qgis.core import QgsApplication

    sys.path.insert(0, plugins_dir)
    import geopsp_processing

    plugin = geopsp_processing.classFactory(None)
    plugin.initProcessing()
    provider = QgsApplication.processingRegistry().providerById("geopsp")
    if provider is None:
        raise RuntimeError("the geopsp provider did not register")
    return plugin


class Recorder:
    """A Processing feedback that records what the algorithm reported; can cancel itself."""

    def __init__(self, cancel_after_progress: bool = False) -> None:
        from qgis.core import QgsProcessingFeedback

        self.feedback = QgsProcessingFeedback()
        self.progress: list[float] = []
        self.cancelled_at: float | None = None
        self.cancel_after_progress = cancel_after_progress
        self.feedback.progressChanged.connect(self._progress)

    def _progress(self, value: float) -> None:
        self.progress.append(round(float(value), 2))
        if self.cancel_after_progress and self.cancelled_at is None and value > 0:
            self.cancelled_at = time.monotonic()
            self.feedback.cancel()

    def log(self) -> list[str]:
        """Return the feedback's text log (pushInfo, pushWarning, pushCommandInfo ...)."""
        return [ln for ln in self.feedback.textLog().splitlines() if ln.strip()]


def _rgb(color: Any) -> list[int]:
    return [color.red(), color.green(), color.blue()]


def _same_classes(found: list[dict], expect: list[dict]) -> bool:
    want = {int(c["id"]): (c["name"], list(c["color"])[:3]) for c in expect}
    got = {int(c["id"]): (c["name"], list(c["color"])[:3]) for c in found}
    return got == want


def _layer_report(layer: Any, expect: list[dict]) -> dict:
    """Read a loaded layer's renderer: its type and classes."""
    from qgis.core import QgsMapLayerType

    out: dict = {"name": layer.name(), "valid": layer.isValid(), "source": layer.source()}
    renderer = layer.renderer()
    out["renderer"] = renderer.type() if renderer is not None else None
    classes: list[dict] = []
    if layer.type() == QgsMapLayerType.RasterLayer and out["renderer"] == "paletted":
        classes = [{"id": int(c.value), "name": c.label, "color": _rgb(c.color)} for c in renderer.classes()]
    elif layer.type() == QgsMapLayerType.VectorLayer and out["renderer"] == "categorizedSymbol":
        out["attribute"] = renderer.classAttribute()
        classes = [
            {"id": int(c.value()), "name": c.label(), "color": _rgb(c.symbol().color())} for c in renderer.categories()
        ]
        out["features"] = layer.featureCount()
    out["classes"] = classes
    out["classes_ok"] = _same_classes(classes, expect)
    return out


_KEEP: list = []  # projects and contexts live to the end (QGIS 3.22 crashes when Python deletes them early)


def _project() -> Any:
    from qgis.core import QgsProject

    project = QgsProject()
    _KEEP.append(project)
    return project


def _run_and_load(alg_id: str, params: dict, expect: list[dict], project: Any = None) -> dict:
    """Run an algorithm as the GUI does, load its results into ``project``; report both."""
    import processing
    from processing.gui.Postprocessing import handleAlgorithmResults
    from qgis.core import QgsApplication, QgsProcessingContext

    project = project if project is not None else _project()
    context = QgsProcessingContext()
    context.setProject(project)
    _KEEP.append(context)
    rec = Recorder()
    t0 = time.monotonic()
    results = processing.run(alg_id, params, feedback=rec.feedback, context=context)
    seconds = round(time.monotonic() - t0, 2)
    alg = QgsApplication.processingRegistry().algorithmById(alg_id)
    to_load = sorted(context.layersToLoadOnCompletion().keys())
    loaded_ok = handleAlgorithmResults(alg, context, rec.feedback, parameters=params)
    layers = [_layer_report(lyr, expect) for lyr in project.mapLayers().values()]
    return {
        "results": {k: v for k, v in results.items() if isinstance(v, (str, int, float, type(None)))},
        "seconds": seconds,
        "progress": rec.progress,
        "log": rec.log(),
        "to_load": to_load,
        "loaded_ok": bool(loaded_ok),
        "layers": sorted(layers, key=lambda d: d["name"]),
    }


def _expect_error(alg_id: str, params: dict, cancel: bool = False) -> dict:
    """Run an algorithm that must fail (or be cancelled); report the exception and the log."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingException

    context = QgsProcessingContext()
    context.setProject(_project())
    _KEEP.append(context)
    rec = Recorder(cancel_after_progress=cancel)
    out: dict = {"raised": None, "message": None}
    t0 = time.monotonic()
    try:
        out["results"] = {
            k: str(v) for k, v in processing.run(alg_id, params, feedback=rec.feedback, context=context).items()
        }
    except QgsProcessingException as exc:
        out["raised"] = "QgsProcessingException"
        out["message"] = str(exc)
    ended = time.monotonic()
    out["seconds"] = round(ended - t0, 2)
    if rec.cancelled_at is not None:
        out["seconds_after_cancel"] = round(ended - rec.cancelled_at, 2)
    out["progress"] = rec.progress
    out["log"] = rec.log()
    return out


def _screenshot(path: str, params: dict) -> dict:
    """Grab the segment algorithm's dialog, filled in with ``params``, as QGIS shows it, into a PNG."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtWidgets import QSplitter

    alg = QgsApplication.processingRegistry().createAlgorithmById("geopsp:segment")
    dialog = AlgorithmDialog(alg)
    dialog.setParameters(params)
    dialog.show()
    dialog.resize(QSize(980, 660))
    splitter = dialog.findChild(QSplitter)
    if splitter is not None:  # the parameters wide enough for their buttons, the help beside them
        splitter.setSizes([700, 260])
    QgsApplication.processEvents()
    image = dialog.grab()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ok = image.save(path, "PNG")
    dialog.close()
    dialog.deleteLater()
    QgsApplication.processEvents()
    return {"path": path, "saved": bool(ok), "size": [image.width(), image.height()]}


def main(argv: list[str] | None = None) -> int:
    """Run the checks; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugins-dir", required=True, help="the python/plugins folder geopsp qgis install wrote to")
    ap.add_argument("--model", required=True, help="model bundle")
    ap.add_argument("--scene", required=True, help="small scene to segment")
    ap.add_argument("--labels", required=True, help="reference label raster of --scene")
    ap.add_argument("--big-scene", required=True, help="larger scene, cancelled mid-run")
    ap.add_argument("--expect", required=True, help="JSON file: list of {id, name, color}")
    ap.add_argument("--work", required=True, help="folder for the outputs")
    ap.add_argument("--screenshot", help="write a PNG of the segment algorithm's dialog")
    args = ap.parse_args(argv)
    expect = json.loads(Path(args.expect).read_text(encoding="utf-8"))
    work = Path(args.work)
    try:
        app = _start_qgis()
        _plugin = _register(args.plugins_dir)
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"QGIS or the plugin cannot start: {exc}",
                          "traceback": traceback.format_exc()}))  # fmt: skip
        return 2
    from qgis.core import Qgis, QgsApplication, QgsProcessingOutputLayerDefinition

    provider = QgsApplication.processingRegistry().providerById("geopsp")
    report: dict = {
        "qgis_version": Qgis.QGIS_VERSION,
        "provider": {"id": provider.id(), "long_name": provider.longName()},
        "algorithms": sorted(a.id() for a in provider.algorithms()),
        "parameters": {a.id(): [p.name() for p in a.parameterDefinitions()] for a in provider.algorithms()},
        "outputs": {a.id(): [o.name() for o in a.outputDefinitions()] for a in provider.algorithms()},
    }
    steps: dict = {}
    seg_out = work / "segment"
    seg_params = {"INPUT": args.scene, "MODEL": args.model, "OUTPUT": str(seg_out), "VECTOR": True,
                  "QA": True, "TTA": 0}  # fmt: skip
    try:
        steps["segment"] = _run_and_load("geopsp:segment", seg_params, expect)
        classes = steps["segment"]["results"].get("CLASSES")
        vec_out = work / "vectorize" / "polygons.gpkg"
        vec_out.parent.mkdir(parents=True, exist_ok=True)
        project = _project()  # as the dialog does: the output is loaded into the project that asked for it
        destination = QgsProcessingOutputLayerDefinition(str(vec_out), project)
        steps["vectorize"] = _run_and_load(
            "geopsp:vectorize", {"INPUT": classes, "OUTPUT": destination, "MIN_AREA": 200.0}, expect, project
        )
        steps["evaluate"] = _run_and_load(
            "geopsp:evaluate", {"INPUT": classes, "REFERENCE": args.labels, "OUTPUT": str(work / "evaluate")}, expect
        )
        steps["exists"] = _expect_error("geopsp:segment", seg_params)
        cancel_out = work / "cancelled"
        cancel_params = {**seg_params, "INPUT": args.big_scene, "OUTPUT": str(cancel_out), "VECTOR": False}
        steps["cancel"] = _expect_error("geopsp:segment", cancel_params, cancel=True)
        steps["cancel"]["left"] = sorted(p.name for p in cancel_out.iterdir()) if cancel_out.is_dir() else []
        if args.screenshot:
            steps["screenshot"] = _screenshot(args.screenshot, {**seg_params, "OUTPUT": "out"})
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    report["steps"] = steps
    report["ok"] = "error" not in report
    print(json.dumps(report, indent=2, default=str), flush=True)
    sys.stderr.flush()
    # QGIS 3.22 can crash in exitQgis() once Processing ran algorithms and showed a dialog from
    # Python; the report is complete by now, so leave without that teardown.
    del app
    os._exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    sys.exit(main())
