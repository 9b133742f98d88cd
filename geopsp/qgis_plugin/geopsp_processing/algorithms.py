"""The Processing algorithms ``geopsp:segment``, ``geopsp:vectorize`` and ``geopsp:evaluate``.

Each maps its parameters onto the options of one ``geopsp`` command and runs it in the
recorded environment (:mod:`.runner`). The ids and parameter names are stable: scripts and
models call them with ``processing.run("geopsp:segment", {"INPUT": ..., ...})``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from .runner import GeopspFailed, run_geopsp

__all__ = ["DefaultStyle", "EvaluateAlgorithm", "GeopspAlgorithm", "SegmentAlgorithm", "VectorizeAlgorithm"]

TTA = ["none", "flip", "d4"]
RUNTIMES = ["auto", "torch", "onnxruntime"]
CONNECTIVITY = ["4", "8"]
QA_RASTERS = ("probability", "margin", "entropy", "disagreement")
VECTOR_EXTENSIONS = ["gpkg", "geojson", "fgb", "shp", "parquet"]


class DefaultStyle(QgsProcessingLayerPostProcessorInterface):
    """Give a loaded output its default style: the ``.qml`` sidecar, or the GeoPackage's own."""

    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:
        """Load the layer's default style (Processing loads outputs without it)."""
        _message, ok = layer.loadDefaultStyle()
        if ok:
            layer.triggerRepaint()


_STYLE = DefaultStyle()  # Processing does not own post-processors: keep one alive for the session


class GeopspAlgorithm(QgsProcessingAlgorithm):
    """What the three algorithms share: naming, running geopsp, loading the outputs styled."""

    def createInstance(self) -> GeopspAlgorithm:
        """Return a new instance (Processing runs each in its own)."""
        return type(self)()

    def run_command(self, args: list[str], feedback: QgsProcessingFeedback) -> dict[str, str]:
        """Run ``geopsp ARGS``; its one-line error becomes a :class:`QgsProcessingException`."""
        try:
            return run_geopsp(args, feedback)
        except GeopspFailed as exc:
            raise QgsProcessingException(str(exc)) from None

    def load_on_completion(self, path: str, name: str, output: str, context: QgsProcessingContext) -> None:
        """Have the GUI add ``path`` to the project when the algorithm finishes, with its default style."""
        details = QgsProcessingContext.LayerDetails(name, context.project(), output)
        details.setPostProcessor(_STYLE)
        context.addLayerToLoadOnCompletion(path, details)

    def style_on_completion(self, path: str, context: QgsProcessingContext) -> None:
        """Give a destination output that Processing loads itself its default style."""
        if context.willLoadLayerOnCompletion(path):
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(_STYLE)

    @staticmethod
    def file_source(layer: Any, key: str) -> str:
        """Return the file behind a layer (geopsp reads files, not QGIS providers)."""
        if layer is None:
            raise QgsProcessingException(f"{key}: no layer or file given")
        source = str(layer.source())
        if layer.providerType() not in ("gdal", "ogr"):
            raise QgsProcessingException(
                f"{key}: {layer.name()} comes from the {layer.providerType()} provider; geopsp reads files "
                "(GeoTIFF, GeoPackage, ...): save it as a file first"
            )
        return source.split("|", 1)[0]  # an OGR source may carry |layername=...


class SegmentAlgorithm(GeopspAlgorithm):
    """``geopsp:segment``: ``geopsp predict`` on one scene."""

    INPUT, MODEL, OUTPUT = "INPUT", "MODEL", "OUTPUT"

    def name(self) -> str:
        """Return the id within the provider: ``geopsp:segment``."""
        return "segment"

    def displayName(self) -> str:
        """Return the name shown in the toolbox."""
        return "Segment raster (PSPNet)"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return (
            "Segments a scene into a styled class raster with a geopsp model bundle (.safetensors) or an "
            "exported ONNX model, tile by tile with blended overlaps (geopsp predict). Optionally writes "
            "the polygons (GeoPackage), the winning-class probability and the QA layers (margin, entropy, "
            "tile disagreement). Outputs are written to OUTPUT as SCENE_classes.tif, SCENE_polygons.gpkg, "
            "SCENE_summary.json ... (SCENE: the scene's file name); nothing is left there when the run fails or "
            "is cancelled."
        )

    def initAlgorithm(self, config: Any = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Scene"))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Model (bundle .safetensors or .onnx)",
                behavior=QgsProcessingParameterFile.File,
                fileFilter="geopsp models (*.safetensors *.onnx);;All files (*.*)",
            )
        )
        self.addParameter(QgsProcessingParameterBoolean("VECTOR", "Also write polygons (GeoPackage)", False))
        self.addParameter(
            QgsProcessingParameterBoolean("PROBABILITIES", "Also write the winning-class probability", False)
        )
        self.addParameter(
            QgsProcessingParameterBoolean("QA", "Also write the QA layers (margin, entropy, disagreement ...)", False)
        )
        self.addParameter(QgsProcessingParameterEnum("TTA", "Test-time augmentation", options=TTA, defaultValue=0))
        advanced = [
            QgsProcessingParameterNumber(
                "TILE_SIZE", "Tile edge in pixels [default: the model's]", type=QgsProcessingParameterNumber.Integer,
                minValue=1, optional=True,
            ),
            QgsProcessingParameterNumber(
                "OVERLAP", "Overlap between tiles in pixels [default: the model's]",
                type=QgsProcessingParameterNumber.Integer, minValue=0, optional=True,
            ),
            QgsProcessingParameterEnum("RUNTIME", "Runtime", options=RUNTIMES, defaultValue=0),
            QgsProcessingParameterString("DEVICE", "Device (auto, cpu, cuda, cuda:N)", defaultValue="auto"),
        ]  # fmt: skip
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterBoolean("OVERWRITE", "Replace existing outputs", False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer("CLASSES", "Classes"))
        self.addOutput(QgsProcessingOutputVectorLayer("VECTOR", "Polygons", QgsProcessing.TypeVectorPolygon))
        for name in QA_RASTERS:
            self.addOutput(QgsProcessingOutputRasterLayer(name.upper(), name.capitalize()))
        self.addOutput(QgsProcessingOutputFile("SUMMARY", "Run summary (JSON)"))

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Run ``geopsp predict``; return the outputs and have the GUI load them styled."""
        scene = self.file_source(self.parameterAsRasterLayer(parameters, self.INPUT, context), self.INPUT)
        model = self.parameterAsFile(parameters, self.MODEL, context)
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        args = ["predict", scene, "--model", model, "--out", out]
        args += ["--tta", TTA[self.parameterAsEnum(parameters, "TTA", context)]]
        args += ["--runtime", RUNTIMES[self.parameterAsEnum(parameters, "RUNTIME", context)]]
        args += ["--device", self.parameterAsString(parameters, "DEVICE", context).strip() or "auto"]
        for key, option in (("TILE_SIZE", "--tile"), ("OVERLAP", "--overlap")):
            if parameters.get(key) is not None:
                args += [option, str(self.parameterAsInt(parameters, key, context))]
        flags = {"VECTOR": "--vector", "PROBABILITIES": "--probabilities", "QA": "--qa", "OVERWRITE": "--overwrite"}
        args += [flag for key, flag in flags.items() if self.parameterAsBoolean(parameters, key, context)]
        written = self.run_command(args, feedback)
        results: dict[str, Any] = {self.OUTPUT: out, "SUMMARY": written.get("summary")}
        layers = [("classes", "CLASSES"), ("vector", "VECTOR"), *((n, n.upper()) for n in QA_RASTERS)]
        for name, output in layers:
            path = written.get(name)
            results[output] = path
            if path is not None:
                self.load_on_completion(path, Path(path).stem, output, context)
        return results


class VectorizeAlgorithm(GeopspAlgorithm):
    """``geopsp:vectorize``: ``geopsp vectorize`` of a class raster."""

    def name(self) -> str:
        """Return the id within the provider: ``geopsp:vectorize``."""
        return "vectorize"

    def displayName(self) -> str:
        """Return the name shown in the toolbox."""
        return "Vectorize class raster"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return (
            "Turns a class raster into seamless land-use polygons (geopsp vectorize): one polygon per connected "
            "region, with class_id, class_name, area_m2, perimeter_m and scene attributes and the classes' "
            "colours as a categorized style. Regions below SIEVE_PX pixels or MIN_AREA m² merge into their "
            "neighbours; SIMPLIFY simplifies the shared edges once (no gaps or overlaps)."
        )

    def initAlgorithm(self, config: Any = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        double = QgsProcessingParameterNumber.Double
        self.addParameter(
            QgsProcessingParameterNumber("MIN_AREA", "Merge polygons below (m²)", double, 0.0, False, 0.0)
        )
        self.addParameter(
            QgsProcessingParameterNumber("SIMPLIFY", "Simplify tolerance (map units)", double, 0.0, False, 0.0)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "SIEVE_PX", "Merge regions below (pixels)", QgsProcessingParameterNumber.Integer, 0, False, 0
            )
        )
        self.addParameter(QgsProcessingParameterNumber("FILL_HOLES", "Fill holes below (m²)", double, 0.0, False, 0.0))
        self.addParameter(
            QgsProcessingParameterEnum("CONNECTIVITY", "Pixel connectivity", options=CONNECTIVITY, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterString("SKIP_CLASSES", "Class ids without polygons (comma separated)", optional=True)
        )
        self.addParameter(QgsProcessingParameterBoolean("OVERWRITE", "Replace an existing output", False))
        self.addParameter(
            QgsProcessingParameterVectorDestination("OUTPUT", "Polygons", QgsProcessing.TypeVectorPolygon)
        )

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Run ``geopsp vectorize``; return the polygons."""
        raster = self.file_source(self.parameterAsRasterLayer(parameters, "INPUT", context), "INPUT")
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["vectorize", raster, "--out", out]
        args += ["--min-area", repr(self.parameterAsDouble(parameters, "MIN_AREA", context))]
        args += ["--simplify", repr(self.parameterAsDouble(parameters, "SIMPLIFY", context))]
        args += ["--sieve-px", str(self.parameterAsInt(parameters, "SIEVE_PX", context))]
        args += ["--fill-holes", repr(self.parameterAsDouble(parameters, "FILL_HOLES", context))]
        args += ["--connectivity", CONNECTIVITY[self.parameterAsEnum(parameters, "CONNECTIVITY", context)]]
        for item in _numbers(self.parameterAsString(parameters, "SKIP_CLASSES", context), "SKIP_CLASSES", int):
            args += ["--skip-class", str(item)]
        if self.parameterAsBoolean(parameters, "OVERWRITE", context):
            args.append("--overwrite")
        written = self.run_command(args, feedback)
        self.style_on_completion(out, context)
        return {"OUTPUT": written.get("vector", out)}


class EvaluateAlgorithm(GeopspAlgorithm):
    """``geopsp:evaluate``: ``geopsp evaluate`` of a class raster against reference labels."""

    def name(self) -> str:
        """Return the id within the provider: ``geopsp:evaluate``."""
        return "evaluate"

    def displayName(self) -> str:
        """Return the name shown in the toolbox."""
        return "Evaluate against reference labels"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return (
            "Scores a class raster against a reference raster, or polygons rasterized onto its grid "
            "(geopsp evaluate): per-class IoU, F1, producer's and user's accuracy, mIoU, overall accuracy, "
            "Cohen's kappa and the confusion matrix, written to OUTPUT as report.json, classes.csv, "
            "confusion.csv and confusion.png."
        )

    def initAlgorithm(self, config: Any = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Prediction (class raster)"))
        self.addParameter(QgsProcessingParameterMapLayer("REFERENCE", "Reference labels (raster or polygons)"))
        self.addParameter(
            QgsProcessingParameterField(
                "FIELD", "Polygons: attribute holding the class id", parentLayerParameterName="REFERENCE",
                type=QgsProcessingParameterField.Numeric, optional=True,
            )
        )  # fmt: skip
        integer = QgsProcessingParameterNumber.Integer
        self.addParameter(
            QgsProcessingParameterNumber("BURN_VALUE", "Polygons: class id of every polygon", integer, optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber("BACKGROUND", "Polygons: class id outside them", integer, optional=True)
        )
        self.addParameter(
            QgsProcessingParameterString("IGNORE_VALUES", "Reference values meaning unlabeled (comma separated)",
                                         optional=True)
        )  # fmt: skip
        self.addParameter(QgsProcessingParameterBoolean("ALL_TOUCHED", "Polygons: burn every pixel touched", False))
        self.addParameter(QgsProcessingParameterBoolean("BUILDINGS", "Also score building footprints", False))
        self.addParameter(QgsProcessingParameterBoolean("OVERWRITE", "Replace an existing report", False))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Report folder"))
        self.addOutput(QgsProcessingOutputFile("REPORT", "Report (JSON)"))
        self.addOutput(QgsProcessingOutputNumber("MIOU", "mIoU"))
        self.addOutput(QgsProcessingOutputNumber("OVERALL_ACCURACY", "Overall accuracy"))
        self.addOutput(QgsProcessingOutputNumber("KAPPA", "Cohen's kappa"))

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Run ``geopsp evaluate``; return the report and its headline scores."""
        prediction = self.file_source(self.parameterAsRasterLayer(parameters, "INPUT", context), "INPUT")
        reference = self.file_source(self.parameterAsLayer(parameters, "REFERENCE", context), "REFERENCE")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = ["evaluate", prediction, reference, "--out", out]
        field = self.parameterAsString(parameters, "FIELD", context)
        if field:
            args += ["--field", field]
        for key, option in (("BURN_VALUE", "--burn-value"), ("BACKGROUND", "--background")):
            if parameters.get(key) is not None:
                args += [option, str(self.parameterAsInt(parameters, key, context))]
        for value in _numbers(self.parameterAsString(parameters, "IGNORE_VALUES", context), "IGNORE_VALUES", float):
            args += ["--ignore-value", repr(value)]
        flags = {"ALL_TOUCHED": "--all-touched", "BUILDINGS": "--buildings", "OVERWRITE": "--overwrite"}
        args += [flag for key, flag in flags.items() if self.parameterAsBoolean(parameters, key, context)]
        written = self.run_command(args, feedback)
        report_path = written.get("report")
        scores: dict[str, Any] = {}
        if report_path is not None:
            scores = json.loads(Path(report_path).read_text(encoding="utf-8"))
            feedback.pushInfo(f"mIoU {scores.get('miou')}, overall accuracy {scores.get('overall_accuracy')}")
        return {
            "OUTPUT": out,
            "REPORT": report_path,
            "MIOU": scores.get("miou"),
            "OVERALL_ACCURACY": scores.get("overall_accuracy"),
            "KAPPA": scores.get("kappa"),
        }


def _numbers(text: str, key: str, kind: type) -> list[Any]:
    """Parse a comma-separated list of numbers (an empty text is none)."""
    try:
        return [kind(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise QgsProcessingException(f"{key}: {text!r} is not a comma-separated list of numbers") from None
