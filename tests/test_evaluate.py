"""Evaluation: metrics from hand-built confusion matrices, streamed raster scoring, vector
references in another CRS, building F1 matching, and the CLI."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner

from geopsp.classes import ClassTable
from geopsp.cli.main import cli
from geopsp.eval import (
    ConfusionMatrix,
    building_scores,
    evaluate_buildings,
    evaluate_rasters,
    match_footprints,
    scores_from_confusion,
)
from geopsp.labels import UnknownLabelWarning
from geopsp.testing import write_geotiff

TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0)


# --------------------------------------------------------------------------- metrics


def test_scores_from_hand_counts():
    # rows = reference, columns = prediction
    cm = np.array([[50, 10, 0], [5, 30, 0], [0, 0, 0]])
    s = scores_from_confusion(cm, ["a", "b", "c"])
    tp_a, fp_a, fn_a = 50, 5, 10
    tp_b, fp_b, fn_b = 30, 10, 5
    assert s.classes[0].iou == pytest.approx(tp_a / (tp_a + fp_a + fn_a))
    assert s.classes[1].iou == pytest.approx(tp_b / (tp_b + fp_b + fn_b))
    assert s.classes[0].f1 == pytest.approx(2 * tp_a / (2 * tp_a + fp_a + fn_a))
    assert s.classes[0].producer_accuracy == pytest.approx(tp_a / (tp_a + fn_a))
    assert s.classes[0].user_accuracy == pytest.approx(tp_a / (tp_a + fp_a))
    total = cm.sum()
    assert s.overall_accuracy == pytest.approx((tp_a + tp_b) / total)
    # kappa from its definition
    po = (tp_a + tp_b) / total
    pe = ((tp_a + fn_a) * (tp_a + fp_a) + (tp_b + fn_b) * (tp_b + fp_b)) / total**2
    assert s.kappa == pytest.approx((po - pe) / (1 - pe))
    # class c is absent on both sides: NaN and "absent", not a perfect 1.0
    c = s.classes[2]
    assert c.status == "absent"
    assert math.isnan(c.iou) and math.isnan(c.f1)
    assert s.miou == pytest.approx((s.classes[0].iou + s.classes[1].iou) / 2)
    d = s.to_dict()
    assert d["absent_classes"] == ["c"]
    assert d["classes"][2]["iou"] is None
    json.dumps(d, allow_nan=False)


def test_one_sided_classes():
    # class 1 only predicted, class 2 only in the reference
    cm = np.array([[8, 2, 0], [0, 0, 0], [3, 0, 0]])
    s = scores_from_confusion(cm)
    assert s.classes[1].status == "not_in_reference"
    assert s.classes[1].iou == 0.0 and math.isnan(s.classes[1].producer_accuracy)
    assert s.classes[2].status == "not_predicted"
    assert s.classes[2].iou == 0.0 and math.isnan(s.classes[2].user_accuracy)
    assert s.miou == pytest.approx((8 / 13 + 0 + 0) / 3)
    # over the reference's classes only (0 and 2): the class only predicted does not count
    assert s.miou_reference_classes == pytest.approx((8 / 13 + 0) / 2)
    assert s.mean_f1_reference_classes == pytest.approx((2 * 8 / (11 + 10) + 0) / 2)


def test_confusion_matrix_streams_and_ignores():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, size=(40, 30))
    pred = rng.integers(0, 3, size=(40, 30))
    ref[:5] = 255  # unlabeled
    pred[-3:] = 255  # nodata in the prediction
    whole = ConfusionMatrix(3)
    whole.update(ref, pred, ignore=255)
    blocks = ConfusionMatrix(3)
    for r0 in range(0, 40, 7):
        blocks.update(ref[r0 : r0 + 7], pred[r0 : r0 + 7], ignore=255)
    assert np.array_equal(whole.counts, blocks.counts)
    keep = (ref != 255) & (pred != 255)
    assert whole.total == keep.sum()
    expected = np.zeros((3, 3), dtype=np.int64)
    for r, p in zip(ref[keep], pred[keep], strict=True):
        expected[r, p] += 1
    assert np.array_equal(whole.counts[:, :3], expected)


def test_no_pixels_gives_nan_not_perfect():
    s = ConfusionMatrix(2).scores()
    assert math.isnan(s.overall_accuracy) and math.isnan(s.miou) and math.isnan(s.kappa)
    assert all(c.status == "absent" for c in s.classes)


# --------------------------------------------------------------------------- rasters


def _classes() -> ClassTable:
    return ClassTable.from_list([{"id": 1, "name": "one"}, {"id": 2, "name": "two"}, {"id": 3, "name": "three"}])


def test_evaluate_rasters_block_streaming_matches_counts(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 4, size=(53, 47)).astype("uint8")  # 0 = unlabeled
    pred = rng.integers(1, 4, size=(53, 47)).astype("uint8")
    pred[0, :] = 255  # nodata
    write_geotiff(tmp_path / "ref.tif", ref, transform=TRANSFORM, nodata=0)
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM, nodata=255)
    ev = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif", classes=_classes(), block_rows=5)
    keep = (ref != 0) & (pred != 255)
    expected = np.zeros((3, 3), dtype=np.int64)
    for r, p in zip(ref[keep], pred[keep], strict=True):
        expected[r - 1, p - 1] += 1
    assert np.array_equal(ev.scores.confusion[:, :3], expected)
    assert ev.excluded["prediction_nodata"] == 47
    assert ev.scores.pixels == keep.sum()


def test_evaluate_rasters_ignore_values_and_unknown_warning(tmp_path):
    ref = np.array([[1, 2, 9, 0]], dtype="uint8")
    pred = np.array([[1, 1, 1, 1]], dtype="uint8")
    write_geotiff(tmp_path / "ref.tif", ref, transform=TRANSFORM)
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM)
    with pytest.warns(UnknownLabelWarning, match="9"):
        ev = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif", classes=_classes(), ignore_values=[0])
    assert ev.scores.pixels == 2  # 9 (unknown) and 0 (ignored) are excluded
    assert ev.scores.classes[0].true_positives == 1


def test_reference_on_another_grid_is_warped(tmp_path):
    pred = np.zeros((20, 20), dtype="uint8") + 1
    pred[:, 10:] = 2
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM)
    # a reference twice as large, 5 px further left and up, with the same pixel size
    big = np.zeros((30, 30), dtype="uint8")
    big[5:25, 5:25] = pred
    shifted = Affine(10.0, 0.0, 500000.0 - 50.0, 0.0, -10.0, 5600000.0 + 50.0)
    write_geotiff(tmp_path / "ref.tif", big, transform=shifted, nodata=0)
    ev = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif", classes=_classes())
    assert ev.scores.overall_accuracy == 1.0
    assert ev.scores.pixels == 400


def test_vector_reference_in_other_crs(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    pred = np.full((30, 30), 1, dtype="uint8")
    pred[10:20, 10:20] = 2
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM)
    # a square covering pixel rows/cols 10..19 (edges a quarter pixel inside), stored in WGS84
    x0, y1 = 500000.0 + 10 * 10 + 2.5, 5600000.0 - 10 * 10 - 2.5
    x1, y0 = 500000.0 + 20 * 10 - 2.5, 5600000.0 - 20 * 10 + 2.5
    gdf = gpd.GeoDataFrame({"cls": [2]}, geometry=[box(x0, y0, x1, y1)], crs="EPSG:32633").to_crs("EPSG:4326")
    gdf.to_file(tmp_path / "ref.gpkg")
    ev = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.gpkg", classes=_classes(), field="cls", block_rows=7)
    assert ev.scores.pixels == 100  # only the polygon's pixels are labeled
    assert ev.scores.classes[1].iou == 1.0
    # with a background class, the rest counts too
    ev2 = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.gpkg", classes=_classes(), field="cls", background=1)
    assert ev2.scores.pixels == 900 and ev2.scores.overall_accuracy == 1.0


def test_class_table_from_prediction_values(tmp_path):
    pred = np.array([[3, 5]], dtype="uint8")
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM)
    write_geotiff(tmp_path / "ref.tif", pred, transform=TRANSFORM)
    ev = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif")
    assert ev.classes.ids == [3, 5]
    assert ev.scores.overall_accuracy == 1.0


# --------------------------------------------------------------------------- buildings


def test_footprint_matching_threshold():
    from shapely.geometry import box

    ref = [box(0, 0, 10, 10)]
    # IoU of a square shifted by s: (10 - s) / (10 + s); 0.5 at s = 10/3
    above = box(3.3, 0, 13.3, 10)
    below = box(3.4, 0, 13.4, 10)
    assert (10 - 3.3) / (10 + 3.3) > 0.5 > (10 - 3.4) / (10 + 3.4)
    assert len(match_footprints([above], ref)) == 1
    assert match_footprints([below], ref) == []
    s = building_scores([above, box(50, 50, 60, 60)], ref)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 0)
    assert s.precision == 0.5 and s.recall == 1.0
    assert s.f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_footprint_matching_is_one_to_one_greedy():
    from shapely.geometry import box

    ref = [box(0, 0, 10, 10)]
    preds = [box(1, 0, 11, 10), box(0.5, 0, 10.5, 10)]  # both IoU > 0.5; the better one wins
    m = match_footprints(preds, ref)
    assert len(m) == 1 and m[0][0] == 1
    s = building_scores(preds, ref)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 0)
    empty = building_scores([], [])
    assert math.isnan(empty.f1)


def test_evaluate_buildings_from_class_raster(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    pred = np.zeros((40, 40), dtype="uint8")
    pred[5:15, 5:15] = 1  # matches the first reference building exactly
    pred[25:35, 25:35] = 1  # shifted 4 px from the second: IoU 6/14 < 0.5
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM)

    def px_box(r0, c0, r1, c1):
        return box(500000 + c0 * 10, 5600000 - r1 * 10, 500000 + c1 * 10, 5600000 - r0 * 10)

    gdf = gpd.GeoDataFrame(geometry=[px_box(5, 5, 15, 15), px_box(25, 29, 35, 39)], crs="EPSG:32633")
    gdf.to_file(tmp_path / "ref.geojson")
    s = evaluate_buildings(tmp_path / "pred.tif", tmp_path / "ref.geojson")
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 1)
    assert s.f1 == pytest.approx(0.5)


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate_stdout_and_out(tmp_path):
    ref = np.array([[1, 1, 2, 2], [3, 3, 0, 0]], dtype="uint8")
    pred = np.array([[1, 2, 2, 2], [3, 1, 1, 1]], dtype="uint8")
    write_geotiff(tmp_path / "ref.tif", ref, transform=TRANSFORM, nodata=0)
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM)
    (tmp_path / "classes.yaml").write_text(
        "classes:\n  - {id: 1, name: one}\n  - {id: 2, name: two}\n  - {id: 3, name: three}\n"
    )
    runner = CliRunner()
    args = [
        "evaluate",
        str(tmp_path / "pred.tif"),
        str(tmp_path / "ref.tif"),
        "--classes",
        str(tmp_path / "classes.yaml"),
    ]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["pixels"] == 6
    assert report["overall_accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"]["counts"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    out = tmp_path / "report"
    res = runner.invoke(cli, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("report.json", "classes.csv", "confusion.csv", "confusion.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "confusion.csv").read_text().splitlines()[0] == "reference \\ prediction,one,two,three"
    res = runner.invoke(cli, [*args, "--out", str(out)])
    assert res.exit_code != 0  # exists without --overwrite


def test_cli_evaluate_buildings(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    pred = np.zeros((20, 20), dtype="uint8")
    pred[2:8, 2:8] = 1
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM)
    gdf = gpd.GeoDataFrame(geometry=[box(500020, 5599920, 500080, 5599980)], crs="EPSG:32633")
    gdf.to_file(tmp_path / "b.geojson")
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "b.geojson"), "--buildings"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["buildings"]["f1"] == 1.0
    assert report["overall_accuracy"] == 1.0  # background burnt as class 0


def test_cli_evaluate_buildings_prints_object_scores(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    def px_box(r0, c0, r1, c1):
        return box(500000 + c0 * 10, 5600000 - r1 * 10, 500000 + c1 * 10, 5600000 - r0 * 10)

    pred = np.zeros((40, 40), dtype="uint8")
    pred[5:15, 5:15] = 1  # the first reference building exactly
    pred[25:35, 25:35] = 1  # 4 px off the second: IoU 6/14 = 0.43
    write_geotiff(tmp_path / "pred.tif", pred, transform=TRANSFORM)
    refs = [px_box(5, 5, 15, 15), px_box(25, 29, 35, 39), px_box(2, 30, 6, 36)]  # the third is missed
    gpd.GeoDataFrame(geometry=refs, crs="EPSG:32633").to_file(tmp_path / "ref.geojson")
    args = ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "ref.geojson"), "--buildings"]
    for threshold, (tp, fp, fn) in ((0.5, (1, 1, 2)), (0.4, (2, 0, 1))):
        out = tmp_path / f"eval{threshold}"
        res = CliRunner().invoke(cli, [*args, "--iou-threshold", str(threshold), "--out", str(out)])
        assert res.exit_code == 0, res.output
        precision, recall = tp / 2, tp / 3
        f1 = 2 * tp / 5
        lines = res.stderr.splitlines()
        assert lines[0].startswith("mIoU ") and " OA " in lines[0]  # the pixel metrics, as before
        line = next(ln for ln in lines if ln.startswith("buildings"))
        assert f"IoU >= {threshold:g}" in line and "class 1" in line
        assert f"precision {round(precision, 4)}  recall {round(recall, 4)}  F1 {round(f1, 4)}" in line
        assert f"TP {tp}  FP {fp}  FN {fn}" in line
        b = json.loads((out / "report.json").read_text())["buildings"]  # the JSON carries the same
        assert (b["true_positives"], b["false_positives"], b["false_negatives"]) == (tp, fp, fn)
        assert b["iou_threshold"] == threshold and b["f1"] == pytest.approx(f1)
        assert b["precision"] == pytest.approx(precision) and b["recall"] == pytest.approx(recall)


def test_cli_evaluate_usage_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["evaluate", "a.tif"]).exit_code == 2
    assert runner.invoke(cli, ["evaluate", "--scene", "s.tif", "a.tif", "b.tif"]).exit_code == 2


def test_evaluate_with_model(tmp_path):
    torch = pytest.importorskip("torch")
    from geopsp.model.bundle import save_bundle
    from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
    from geopsp.model.registry import build_model

    scene = np.random.default_rng(0).integers(0, 255, size=(3, 40, 50)).astype("uint8")
    write_geotiff(tmp_path / "scene.tif", scene, transform=TRANSFORM)
    ref = np.ones((40, 50), dtype="uint8")
    write_geotiff(tmp_path / "ref.tif", ref, transform=TRANSFORM)
    spec = ModelSpec(encoder="resnet18", in_channels=3, num_classes=2, encoder_depth=3, decoder_channels=16, aux=False)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    meta = BundleMeta(
        spec=spec,
        classes=ClassTable.from_list([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]),
        bands=(1, 2, 3),
        band_names=("r", "g", "b"),
        input_dtype="uint8",
        normalization=Normalization.for_dtype("uint8", 3),
        tile_size=64,
        overlap=8,
    )
    save_bundle(model, meta, tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = CliRunner().invoke(
            cli,
            [
                "evaluate",
                "--model",
                str(tmp_path / "m.safetensors"),
                "--scene",
                str(tmp_path / "scene.tif"),
                str(tmp_path / "ref.tif"),
                "--set",
                "predict.device=cpu",
            ],
        )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["pixels"] == 2000
    assert [c["name"] for c in report["classes"]] == ["a", "b"]
