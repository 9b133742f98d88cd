"""Remote scenes: COGs over HTTP with ranges, s3:// through a real S3 API, STAC items of single-band assets.

Every server is started by the test on 127.0.0.1 (:mod:`geopsp.testing_servers`); outputs of a
remote run are compared pixel for pixel with the run on the same file read locally.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from click.testing import CliRunner
from rasterio.enums import Resampling

from geopsp.cli.main import cli
from geopsp.config.schema import PredictConfig
from geopsp.errors import InputRasterError, RemoteReadWarning
from geopsp.io.scene import inspect_scene
from geopsp.io.source import resolve_scene
from geopsp.pipeline import segment_raster
from geopsp.synthetic import make_scene
from geopsp.testing import run_cli
from geopsp.testing_servers import RangeServer

pytestmark = pytest.mark.timeout(300)

CFG = PredictConfig.model_validate({"batch_size": 4})


def _create_bundle(path: Path, bands: int, names: str | None = None, dtype: str = "uint8") -> Path:
    args = ["model", "create", "--preset", "fast", "--encoder", "resnet18", "--bands", str(bands), "--classes", "4"]
    args += ["--tile", "64", "--overlap", "8", "--out", str(path)]
    if names:
        args += ["--band-names", names]
    if dtype != "uint8":
        args += ["--dtype", dtype]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return _create_bundle(tmp_path_factory.mktemp("model") / "m.safetensors", 3, "red,green,blue")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """A folder with a COG, the same pixels as a striped GeoTIFF, and (later) STAC items."""
    root = tmp_path_factory.mktemp("served")
    make_scene(root / "plain.tif", width=1000, height=900, bands=3, seed=3)
    with rasterio.open(root / "plain.tif") as src:
        # no overviews: a full-resolution run needs every byte of the file, once
        rasterio.shutil.copy(src, root / "scene_cog.tif", driver="COG", BLOCKSIZE=256, OVERVIEWS="NONE")
        profile = src.profile | {"tiled": False, "blockysize": 8}
        profile.pop("blockxsize", None)
        with rasterio.open(root / "striped.tif", "w", **profile) as dst:
            dst.write(src.read())
    return root


@pytest.fixture(scope="module")
def local_classes(bundle, served, tmp_path_factory) -> np.ndarray:
    """The classes of the served pixels read from disk (the COG and the striped file hold the same)."""
    res = segment_raster(served / "scene_cog.tif", bundle, tmp_path_factory.mktemp("local"), config=CFG)
    assert res.classes.name == "scene_cog_classes.tif"
    return _classes(res.classes)


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_cog_over_http_predicts_as_the_local_file_and_fetches_each_byte_about_once(
    bundle, served, local_classes, tmp_path
):
    with RangeServer(served) as srv:
        remote = segment_raster(srv.url("scene_cog.tif"), bundle, tmp_path / "remote", config=CFG)
        fetched = srv.bytes_served
    assert remote.classes.name == "scene_cog_classes.tif"
    np.testing.assert_array_equal(_classes(remote.classes), local_classes)
    size = (served / "scene_cog.tif").stat().st_size
    # the header chunk is fetched once more by the reader threads' ranged reads; a second pass would double it
    assert 0.95 * size <= fetched < 1.15 * size, (fetched, size)
    assert remote.summary["scene"] == srv.url("scene_cog.tif")


def test_a_remote_geotiff_that_is_not_a_cog_works_but_warns(bundle, served, local_classes, tmp_path):
    with RangeServer(served) as srv, pytest.warns(RemoteReadWarning, match="not a cloud-optimized GeoTIFF"):
        remote = segment_raster(srv.url("striped.tif"), bundle, tmp_path / "remote", config=CFG)
    np.testing.assert_array_equal(_classes(remote.classes), local_classes)


def test_vsicurl_paths_are_scenes_too(served):
    with RangeServer(served) as srv:
        info = inspect_scene("/vsicurl/" + srv.url("scene_cog.tif"))
    assert (info.width, info.height, info.count) == (1000, 900, 3)
    assert info.source.kind == "vsi" and info.source.name == "scene_cog.tif"


@pytest.mark.parametrize(
    ("status", "expect"),
    [(404, "not found (HTTP 404); check the URL"), (403, "access denied (HTTP 403)")],
)
def test_http_errors_are_one_line_with_exit_1_and_no_output(bundle, served, tmp_path, status, expect):
    with RangeServer(served, status=status if status != 404 else None) as srv:
        url = srv.url("scene_cog.tif" if status != 404 else "missing.tif")
        code, _, err = run_cli("predict", url, "--model", bundle, "--out", tmp_path / "o")
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0] and url in lines[0], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_an_unreachable_server_is_one_line(bundle, tmp_path):
    with RangeServer(tmp_path) as srv:
        url = srv.url("a.tif")
    # the server is stopped: nothing listens on its port any more
    code, _, err = run_cli("predict", url, "--model", bundle, "--out", tmp_path / "o")
    assert code == 1
    assert "cannot reach the server" in err and len(err.strip().splitlines()) == 1, err


def test_s3_scene_through_a_real_s3_api_predicts_as_the_local_file(bundle, served, local_classes, tmp_path, s3_server):
    bucket = f"scenes-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(served / "scene_cog.tif"), bucket, "2024/scene_cog.tif")
    remote = segment_raster(f"s3://{bucket}/2024/scene_cog.tif", bundle, tmp_path / "s3", config=CFG)
    np.testing.assert_array_equal(_classes(remote.classes), local_classes)
    with pytest.raises(InputRasterError, match=r"no such object \(HTTP 404\); check the key"):
        inspect_scene(f"s3://{bucket}/2024/none.tif")
    with pytest.raises(InputRasterError, match="the bucket does not exist"):
        inspect_scene(f"s3://nobucket-{uuid.uuid4().hex[:8]}/a.tif")


# ---------------------------------------------------------------- STAC


def _single_band_assets(root: Path) -> tuple[Path, dict[str, Path]]:
    """A 10 m band and two 20 m bands of one area, and the equivalent stacked 10 m file."""
    make_scene(root / "full.tif", width=160, height=120, bands=3, seed=5, dtype="uint16", pixel_size=10.0)
    assets = {}
    with rasterio.open(root / "full.tif") as src:
        prof = src.profile | {"count": 1}
        stacked = [src.read(1)]
        for b, name, res in ((1, "B02", 10.0), (2, "B03", 20.0), (3, "B04", 20.0)):
            scale = int(res / 10.0)
            data = src.read(b, out_shape=(src.height // scale, src.width // scale), resampling=Resampling.average)
            t = src.transform @ src.transform.scale(scale, scale)
            p = root / f"{name}.tif"
            with rasterio.open(
                p, "w", **(prof | {"width": data.shape[1], "height": data.shape[0], "transform": t})
            ) as d:
                d.write(data, 1)
            assets[name] = p
    # the equivalent local file: the 20 m bands resampled onto the 10 m grid as GDAL does while reading
    with rasterio.open(root / "full.tif") as src:
        prof = src.profile
    for name in ("B03", "B04"):
        with rasterio.open(assets[name]) as s:
            stacked.append(s.read(1, out_shape=(prof["height"], prof["width"]), resampling=Resampling.bilinear))
    with rasterio.open(root / "stacked.tif", "w", **prof) as dst:
        dst.write(np.stack(stacked))
        for i, n in enumerate(("B02", "B03", "B04"), start=1):
            dst.set_band_description(i, n)
    return root / "stacked.tif", assets


def _item(path: Path, assets: dict[str, str], *, common: bool = True) -> Path:
    import pystac
    from pystac.extensions.eo import Band, EOExtension

    common_names = {"B02": "blue", "B03": "green", "B04": "red"}
    item = pystac.Item("S2X_TEST_20240601", None, None, pystac.utils.str_to_datetime("2024-06-01T10:00:00Z"), {})
    for key, href in assets.items():
        asset = pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"])
        item.add_asset(key.lower() if common else key, asset)
        eo = EOExtension.ext(asset, add_if_missing=True)
        eo.bands = [Band.create(name=key, common_name=common_names[key])]
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


def test_stac_item_of_single_band_assets_at_two_resolutions_equals_the_stacked_file(tmp_path):
    stacked, assets = _single_band_assets(tmp_path)
    model = _create_bundle(tmp_path / "s2.safetensors", 3, "B02,B03,B04", dtype="uint16")
    item = _item(tmp_path / "item.json", {k: p.name for k, p in assets.items()})  # hrefs relative to the item
    local = segment_raster(stacked, model, tmp_path / "local", config=CFG)
    via_stac = segment_raster(item, model, tmp_path / "stac", config=CFG)
    assert via_stac.classes.name == "S2X_TEST_20240601_classes.tif"
    np.testing.assert_array_equal(_classes(via_stac.classes), _classes(local.classes))
    with rasterio.open(via_stac.classes) as a, rasterio.open(local.classes) as b:
        assert a.transform == b.transform and a.crs == b.crs


def test_stac_item_over_http_matches_bands_by_common_name(tmp_path):
    stacked, assets = _single_band_assets(tmp_path)
    model = _create_bundle(tmp_path / "rgb.safetensors", 3, "blue,green,red", dtype="uint16")
    local = segment_raster(stacked, model, tmp_path / "local", config=CFG)
    with RangeServer(tmp_path) as srv:
        item = _item(tmp_path / "item.json", {k: srv.url(p.name) for k, p in assets.items()}, common=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RemoteReadWarning)  # the assets are plain GeoTIFFs
            remote = segment_raster(srv.url(item.name), model, tmp_path / "remote", config=CFG)
    np.testing.assert_array_equal(_classes(remote.classes), _classes(local.classes))


def test_a_band_without_an_asset_is_one_line_listing_the_assets(tmp_path):
    _, assets = _single_band_assets(tmp_path)
    model = _create_bundle(tmp_path / "nir.safetensors", 3, "B02,B03,B08", dtype="uint16")
    item = _item(tmp_path / "item.json", {k: p.name for k, p in assets.items()})
    code, _, err = run_cli("predict", item, "--model", model, "--out", tmp_path / "o")
    assert code == 1
    line = err.strip()
    assert len(line.splitlines()) == 1, err
    assert "has no asset for band 'B08'" in line and "b02 (B02/blue)" in line and "b04 (B04/red)" in line
    assert not (tmp_path / "o").exists()


def test_not_a_stac_item_is_one_line(tmp_path):
    (tmp_path / "fc.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(InputRasterError, match="is not a STAC Item"):
        resolve_scene(tmp_path / "fc.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputRasterError, match="is not JSON"):
        resolve_scene(tmp_path / "bad.json")


def test_copy_of_served_folder_is_untouched(served, tmp_path):
    """Reading remotely writes nothing next to the source (no .aux.xml, no .msk)."""
    before = sorted(p.name for p in served.iterdir())
    shutil.copy(served / "scene_cog.tif", tmp_path / "x.tif")
    with RangeServer(tmp_path) as srv:
        inspect_scene(srv.url("x.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]
    assert sorted(p.name for p in served.iterdir()) == before


# ---------------------------------------------------------------- batch


@pytest.mark.dask
def test_batch_takes_urls_items_and_an_item_collection(tmp_path):
    import pystac

    stacked, assets = _single_band_assets(tmp_path)
    model = _create_bundle(tmp_path / "s2.safetensors", 3, "B02,B03,B04", dtype="uint16")
    local = segment_raster(stacked, model, tmp_path / "local", config=CFG)
    item = _item(tmp_path / "item.json", {k: p.name for k, p in assets.items()})
    one = pystac.Item.from_file(str(item))
    two = one.clone()
    two.id = "S2X_TEST_SECOND"
    coll = pystac.ItemCollection([one, two])
    # hrefs relative to the collection file, which sits beside the assets
    (tmp_path / "items.json").write_text(json.dumps(coll.to_dict()))
    out = tmp_path / "batch"
    with RangeServer(tmp_path) as srv, warnings.catch_warnings():
        warnings.simplefilter("ignore", RemoteReadWarning)
        code, _, err = run_cli(
            "batch", srv.url("stacked.tif"), tmp_path / "items.json", "--model", model, "--out", out, "--workers", 1
        )
    assert code == 0, err
    names = sorted(p.name for p in out.glob("*_classes.tif"))
    assert names == ["S2X_TEST_20240601_classes.tif", "S2X_TEST_SECOND_classes.tif", "stacked_classes.tif"]
    for name in names:
        np.testing.assert_array_equal(_classes(out / name), _classes(local.classes))
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {m["scene"] for m in manifest} >= {srv.url("stacked.tif")}


@pytest.mark.dask
def test_batch_of_an_item_collection_into_s3_uploads_its_items_for_the_workers(tmp_path, s3_server):
    import pystac

    _, assets = _single_band_assets(tmp_path)
    model = _create_bundle(tmp_path / "s2.safetensors", 3, "B02,B03,B04", dtype="uint16")
    one = pystac.Item.from_file(str(_item(tmp_path / "item.json", {k: p.name for k, p in assets.items()})))
    (tmp_path / "items.json").write_text(json.dumps(pystac.ItemCollection([one]).to_dict()))
    bucket = f"maps-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    code, _, err = run_cli(
        "batch", tmp_path / "items.json", "--model", model, "--out", f"s3://{bucket}/run/", "--workers", 1
    )
    assert code == 0, err
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "run/.geopsp-items/S2X_TEST_20240601.json" in keys
    assert {"run/S2X_TEST_20240601_classes.tif", "run/S2X_TEST_20240601_summary.json"} <= keys


def test_a_server_gone_mid_run_is_one_line_about_the_network(served):
    from geopsp.io.scene import open_scene, read_rows

    with RangeServer(served) as srv:
        url = srv.url("scene_cog.tif")
        with open_scene(url) as (src, info):
            srv.__exit__()  # the header is read; the server goes away before the pixels
            with pytest.raises(InputRasterError, match="over the network failed") as err:
                read_rows(src, info, info.height - 256, 256, [1, 2, 3])
    assert "corrupt" not in str(err.value) and url in str(err.value)
