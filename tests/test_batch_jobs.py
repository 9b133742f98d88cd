"""Batch job discovery, output-path safety, the manifest and strip planning (no dask, no torch)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path, PurePosixPath

import pytest

from geopsp.batch.jobs import Job, discover_jobs, output_dir_for, safe_relative
from geopsp.batch.manifest import Manifest, SceneRecord
from geopsp.batch.strips import plan_strips
from geopsp.errors import InputRasterError, OutputError


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


# ------------------------------------------------------------------ discovery


def test_single_files_keep_only_their_name(tmp_path):
    a = touch(tmp_path / "deep" / "er" / "a.tif")
    b = touch(tmp_path / "b.TIFF")
    jobs = discover_jobs([a, str(b)])
    assert ids(jobs) == ["a.tif", "b.TIFF"]
    assert jobs[0].scene == a.resolve()
    assert jobs[0].stem == "a"


def test_directory_keeps_sub_paths_and_skips_labels_outputs_and_hidden(tmp_path):
    root = tmp_path / "coll"
    touch(root / "x.tif")
    touch(root / "2021" / "y.tif")
    touch(root / "labels" / "x.tif")
    touch(root / "2021" / "y_mask.tif")
    touch(root / ".hidden" / "z.tif")
    touch(root / "notes.txt")
    touch(root / "old_classes.tif")
    touch(root / ".geopsp-tmp-abc-x_classes.tif")
    assert ids(discover_jobs([root])) == ["2021/y.tif", "x.tif"]


def test_directory_excludes_the_output_folder(tmp_path):
    root = tmp_path / "coll"
    touch(root / "x.tif")
    touch(root / "out" / "x" / "anything.tif")
    assert ids(discover_jobs([root], out_dir=root / "out")) == ["x.tif"]


def test_glob_keeps_path_below_the_fixed_prefix(tmp_path):
    touch(tmp_path / "s" / "a" / "1.tif")
    touch(tmp_path / "s" / "b" / "2.tif")
    touch(tmp_path / "s" / "b" / "3.png")
    jobs = discover_jobs([str(tmp_path / "s" / "**" / "*.tif")])
    assert ids(jobs) == ["a/1.tif", "b/2.tif"]


def test_glob_without_matches_is_an_input_error(tmp_path):
    with pytest.raises(InputRasterError, match="matched no raster"):
        discover_jobs([str(tmp_path / "*.tif")])


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputRasterError, match="no such file"):
        discover_jobs([tmp_path / "nope.tif"])


def test_empty_directory_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputRasterError, match="no raster scenes"):
        discover_jobs([tmp_path / "empty"])


def test_duplicates_are_dropped_and_colliding_names_rejected(tmp_path):
    a = touch(tmp_path / "a" / "x.tif")
    touch(tmp_path / "b" / "x.tif")
    assert ids(discover_jobs([a, a, str(tmp_path / "a" / "*.tif")])) == ["x.tif"]
    with pytest.raises(OutputError, match="would both write"):
        discover_jobs([tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"])
    # Given their common parent, sub-paths keep them apart.
    assert ids(discover_jobs([tmp_path])) == ["a/x.tif", "b/x.tif"]


def test_spacenet_layout_takes_image_products_and_skips_labels(tmp_path):
    aoi = tmp_path / "AOI_2_Vegas"
    touch(aoi / "PS-RGB" / "SN2_PS-RGB_img1.tif")
    touch(aoi / "PS-RGB" / "SN2_PS-RGB_img2.tif")
    touch(aoi / "PS-MS" / "SN2_PS-MS_img1.tif")
    touch(aoi / "geojson" / "buildings" / "buildings_img1.geojson")
    touch(aoi / "geojson_buildings" / "x.tif")
    touch(aoi / "summaryData" / "AOI_2_Vegas.csv")
    assert ids(discover_jobs([aoi])) == [
        "PS-MS/SN2_PS-MS_img1.tif",
        "PS-RGB/SN2_PS-RGB_img1.tif",
        "PS-RGB/SN2_PS-RGB_img2.tif",
    ]
    assert ids(discover_jobs([aoi], spacenet_products=["PS-RGB"])) == [
        "PS-RGB/SN2_PS-RGB_img1.tif",
        "PS-RGB/SN2_PS-RGB_img2.tif",
    ]


def test_deepglobe_layout_takes_sat_and_skips_masks(tmp_path):
    split = tmp_path / "train"
    for i in (10, 2):
        touch(split / f"{i}_sat.jpg")
        touch(split / f"{i}_mask.png")
    touch(split / "overview.png")
    assert ids(discover_jobs([split])) == ["10_sat.jpg", "2_sat.jpg"]


def test_text_list_resolves_relative_to_the_list_and_keeps_safe_sub_paths(tmp_path):
    touch(tmp_path / "data" / "sub" / "a.tif")
    other = touch(tmp_path / "elsewhere" / "b.tif")
    touch(tmp_path / "c.tif")
    lst = tmp_path / "data" / "scenes.txt"
    lst.write_text(f"# scenes\nsub/a.tif\n\n{other}\n../c.tif\n", encoding="utf-8")
    jobs = discover_jobs([lst])
    assert ids(jobs) == ["sub/a.tif", "b.tif", "c.tif"]
    assert jobs[0].scene == (tmp_path / "data" / "sub" / "a.tif").resolve()
    assert jobs[2].scene == (tmp_path / "c.tif").resolve()


def test_list_entries_that_do_not_exist_become_jobs_that_fail_later(tmp_path):
    lst = tmp_path / "l.lst"
    lst.write_text("missing.tif\n", encoding="utf-8")
    jobs = discover_jobs([lst])
    assert ids(jobs) == ["missing.tif"]


def test_csv_list_with_path_and_output_columns(tmp_path):
    touch(tmp_path / "img" / "1_sat.jpg")
    touch(tmp_path / "img" / "2_sat.jpg")
    csv = tmp_path / "metadata.csv"
    csv.write_text("image_id,sat_image_path,output\n1,img/1_sat.jpg,train/one\n2,img/2_sat.jpg,\n", encoding="utf-8")
    jobs = discover_jobs([csv])
    assert ids(jobs) == ["train/one.jpg", "img/2_sat.jpg"]
    assert jobs[0].stem == "one"


def test_csv_without_path_column_is_rejected(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(InputRasterError, match="no path column"):
        discover_jobs([csv])


@pytest.mark.parametrize(
    "name",
    [
        "../escape",
        "a/../../escape",
        "/etc/passwd",
        "..\\..\\win",
        "C:\\temp\\x",
        "~/x",
        "",
        "  ",
        "a/\x00b",
        ".geopsp-work/x",
    ],
)
def test_escaping_output_names_in_csv_are_rejected(tmp_path, name):
    touch(tmp_path / "a.tif")
    csv = tmp_path / "l.csv"
    csv.write_text(f'path,output\na.tif,"{name}"\n', encoding="utf-8")
    if not name.strip():
        # An empty output cell means "mirror the input name".
        assert ids(discover_jobs([csv])) == ["a.tif"]
        return
    with pytest.raises(OutputError):
        discover_jobs([csv])


@pytest.mark.parametrize("name", ["../x.tif", "/abs/x.tif", "a/../../x.tif", "..", "C:/x.tif", "a\\..\\..\\x"])
def test_safe_relative_rejects_escapes(name):
    with pytest.raises(OutputError):
        safe_relative(name)


def test_safe_relative_normalizes():
    assert safe_relative("a/./b//c.tif") == PurePosixPath("a/b/c.tif")
    assert safe_relative("a\\b.tif") == PurePosixPath("a/b.tif")


def test_output_dir_for_refuses_symlink_escape(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, out / "sub")
    job = Job(tmp_path / "x.tif", PurePosixPath("sub/x.tif"))
    with pytest.raises(OutputError, match="outside"):
        output_dir_for(out, job)
    ok = Job(tmp_path / "x.tif", PurePosixPath("fine/x.tif"))
    assert output_dir_for(out, ok) == out / "fine"
    hand_made = Job(tmp_path / "x.tif", PurePosixPath("../x.tif"))
    with pytest.raises(OutputError):
        output_dir_for(out, hand_made)


# ------------------------------------------------------------------ manifest


def test_manifest_latest_record_wins_and_torn_lines_are_skipped(tmp_path):
    m = Manifest(tmp_path)
    touch(tmp_path / "a_classes.tif")
    m.append(SceneRecord("a.tif", "/in/a.tif", "failed", error="boom"))
    m.append(
        [
            SceneRecord("a.tif", "/in/a.tif", "done", ("a_classes.tif",), 1.5),
            SceneRecord("b.tif", "/in/b.tif", "failed"),
        ]
    )
    with open(m.path, "a", encoding="utf-8") as fh:
        fh.write('{"id": "c.tif", "status": "do')  # a crash mid-write
    m.append(SceneRecord("d.tif", "/in/d.tif", "failed", error="x"))
    latest = m.latest()
    assert set(latest) == {"a.tif", "b.tif", "d.tif"}
    assert latest["a.tif"].status == "done"
    assert m.is_complete(latest["a.tif"])
    assert not m.is_complete(latest["b.tif"])
    assert not m.is_complete(None)
    lines = m.path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["id"] == "d.tif"


def test_manifest_complete_needs_outputs_inside_the_folder(tmp_path):
    m = Manifest(tmp_path / "out")
    touch(tmp_path / "out" / "a_classes.tif")
    touch(tmp_path / "secret.tif")
    assert m.is_complete(SceneRecord("a", "a", "done", ("a_classes.tif",)))
    assert not m.is_complete(SceneRecord("a", "a", "done", ("gone.tif",)))
    assert not m.is_complete(SceneRecord("a", "a", "done", ("../secret.tif",)))
    assert not m.is_complete(SceneRecord("a", "a", "done", ()))


def test_manifest_records_round_trip():
    rec = SceneRecord("x/a.tif", "/in/a.tif", "failed", ("x/a_classes.tif",), 2.0, "bad", "InputRasterError", 3, "fp")
    assert SceneRecord.from_dict(json.loads(rec.to_json())) == rec


# ------------------------------------------------------------------ strips


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "max_px"),
    [(1000, 100, 256, 32, 50_000), (5000, 3000, 512, 64, 3_000_000), (97, 131, 64, 8, 1000), (4097, 10, 128, 0, 300)],
)
def test_strips_cover_the_scene_on_block_rows(height, width, tile, overlap, max_px):
    from geopsp.tiling.windows import axis_offsets

    strips = plan_strips(height, width, tile, overlap, max_px)
    assert strips[0][0] == 0
    assert strips[-1][1] == height
    assert all(a < b for a, b in strips)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(strips))
    if height > 512:  # the stitch copies the strips' tiles: strips start on the output's block rows
        assert all(a % 512 == 0 for a, _ in strips)
    else:  # nothing to cut on: the tile grid's offsets
        assert all(a in set(axis_offsets(height, tile, overlap)) for a, _ in strips)
    assert len(strips) > 1 or height <= 512 or height * width <= max_px


@pytest.mark.parametrize("workers", [2, 3, 8])
@pytest.mark.parametrize(("height", "max_px"), [(20000, 50_000_000), (9000, 20_000_000), (30000, 40_000_000)])
def test_strips_for_several_workers_come_in_full_rounds_and_finish_sooner(height, max_px, workers):
    from geopsp.tiling import TileGrid

    width, tile, overlap = 20000, 512, 64
    grid = TileGrid(height, width, tile, overlap)
    strips = plan_strips(height, width, tile, overlap, max_px, workers=workers)
    assert strips[0][0] == 0 and strips[-1][1] == height
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(strips))
    assert all(a % 512 == 0 for a, _ in strips)  # on the class raster's block rows
    assert len(strips) % workers == 0  # no worker runs a round alone
    assert all(r1 - r0 <= -(-max_px // width) + tile for r0, r1 in strips)  # about max_px each, at most

    def makespan(parts):  # tiles on the busiest worker, strips handed out in order
        counts = [grid.count(p) for p in parts]
        return max(sum(counts[i::workers]) for i in range(workers))

    assert makespan(strips) <= makespan(plan_strips(height, width, tile, overlap, max_px))


def test_small_scene_is_one_strip():
    assert plan_strips(100, 100, 64, 8, 10_000) == [(0, 100)]


# ------------------------------------------------------------------ CLI edges (no cluster starts)


@pytest.mark.parametrize("bad", ["GPU", "GPU=many", "=1"])
def test_cli_rejects_malformed_resources(tmp_path, bad):
    from click.testing import CliRunner

    from geopsp.cli.main import cli

    touch(tmp_path / "a.tif")
    args = ["batch", str(tmp_path / "a.tif"), "--model", "m.safetensors", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(cli, [*args, "--resources", bad])
    assert res.exit_code == 2
    assert "NAME=AMOUNT" in res.output


def test_cli_parses_resources_and_gpu_shorthand():
    from geopsp.cli.batch import _parse_resources

    assert _parse_resources((), False) is None
    assert _parse_resources(("GPU=1,MEM=2.5",), False) == {"GPU": 1.0, "MEM": 2.5}
    assert _parse_resources((), True) == {"GPU": 1.0}


def test_missing_model_fails_before_any_cluster_starts(tmp_path):
    from geopsp.batch import run_batch
    from geopsp.errors import CheckpointError

    touch(tmp_path / "a.tif")
    with pytest.raises(CheckpointError, match="model not found"):
        run_batch([tmp_path / "a.tif"], tmp_path / "missing.safetensors", tmp_path / "out")


def test_report_summary_line():
    from geopsp.batch import BatchReport

    recs = (
        SceneRecord("a", "a", "done", ("a_classes.tif",)),
        SceneRecord("b", "b", "skipped", ("b_classes.tif",)),
        SceneRecord("c", "c", "failed", error="boom"),
    )
    report = BatchReport(recs, Path("out"), Path("out/manifest.jsonl"), 1.0)
    assert report.summary_line() == "3 scenes: 1 done, 1 skipped, 1 failed (see out/manifest.jsonl)"
    assert not report.ok
    one = BatchReport(recs[:1], Path("out"), Path("out/manifest.jsonl"), 1.0)
    assert one.summary_line() == "1 scene: 1 done (see out/manifest.jsonl)"
    assert one.ok
