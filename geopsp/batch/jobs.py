"""Turn batch inputs (files, directories, globs, list files) into :class:`Job` records.

Every job carries a *safe relative name* under the output directory; outputs are always
``out_dir / job.rel_dir / <stem>_...``, never a path taken verbatim from a list file or a
manifest, so no input can make geopsp write outside the output directory.

Recognised layouts when a directory is given:

* **SpaceNet**: image product folders (``PS-RGB/``, ``PS-MS/``, ``PAN/`` ...) with ``*.tif``;
  label folders (``geojson*/``, ``labels/``, ``masks/`` ...) are skipped.
* **DeepGlobe**: ``*_sat.jpg`` scenes next to ``*_mask.png`` labels; the masks are skipped.
* anything else: every raster file below the directory, label folders skipped.

Remote rasters (``http(s)://``, ``s3://``, ``/vsi…/``; also as lines of a list file) are one
job each, named after their file name. STAC is taken as it comes: an Item (a ``.json`` file or
URL) is one job named after its id; an ItemCollection (a FeatureCollection of Items) is one
job per item, each written, with absolute asset links, under ``<out>/.geopsp-items/`` so that
every worker reads the same item.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from geopsp.encoding import QA_LAYERS
from geopsp.errors import InputRasterError, OutputError
from geopsp.io.source import is_remote, scene_name

__all__ = [
    "LIST_SUFFIXES",
    "RASTER_SUFFIXES",
    "Job",
    "discover_jobs",
    "is_glob",
    "output_dir_for",
    "safe_relative",
]

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".jp2", ".jpg", ".jpeg", ".png", ".img", ".vrt"})
"""File suffixes treated as scenes when a directory or glob is expanded."""

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list", ".csv"})
"""Suffixes of list files: one path per line, or CSV with a path column."""

STAC_SUFFIXES = frozenset({".json", ".geojson"})
"""Suffixes of STAC Items and ItemCollections."""

ITEMS_DIR = ".geopsp-items"
"""Where the items of an ItemCollection are written, one file each, under the output folder."""


CSV_PATH_COLUMNS = ("path", "scene", "image", "file", "filename", "sat_image_path", "image_path")
CSV_OUTPUT_COLUMNS = ("output", "out", "name")

SPACENET_PRODUCTS = re.compile(
    r"^(PS-RGB|PS-MS|PS-RGBNIR|MS|PAN|RGB-PanSharpen|MUL|MUL-PanSharpen|SAR-Intensity|images?)$", re.IGNORECASE
)
LABEL_DIRS = re.compile(r"(geojson|label|mask|annotation|summarydata|ground.?truth|^gt$|^vectors?$)", re.IGNORECASE)
LABEL_FILES = re.compile(r"(_mask|_label|_labels|_gt)\.[^.]+$", re.IGNORECASE)
OUTPUT_FILES = re.compile(rf"_(classes|{'|'.join(QA_LAYERS)}|preview)\.[^.]+$")


@dataclass(frozen=True, slots=True)
class Job:
    """One scene of a batch.

    Parameters
    ----------
    scene : Path or str
        Absolute path of the input raster (or STAC item), or the URL / ``/vsi…/`` path of a remote one.
    rel : PurePosixPath
        Safe relative name of the scene under the output directory: ``rel.parent`` is the
        output sub-folder, ``rel.name`` the scene's file name whose stem prefixes the outputs.
    """

    scene: Path | str
    rel: PurePosixPath

    @property
    def id(self) -> str:
        """Key of the job in the manifest (its relative name, POSIX style)."""
        return self.rel.as_posix()

    @property
    def stem(self) -> str:
        """Output name prefix (``<stem>_classes.tif``)."""
        return self.rel.stem

    @property
    def key(self) -> str:
        """Short stable hash of :attr:`id`, usable in dask task keys and temp folder names."""
        return hashlib.sha1(self.id.encode()).hexdigest()[:12]


def is_glob(text: str) -> bool:
    """Whether ``text`` contains glob magic (``*``, ``?``, ``[``).

    Examples
    --------
    >>> is_glob("scenes/*.tif"), is_glob("scene.tif")
    (True, False)
    """
    return glob.has_magic(text)


def safe_relative(name: str | os.PathLike[str]) -> PurePosixPath:
    """Validate a relative output name; it may never lead outside the output directory.

    Parameters
    ----------
    name : str or os.PathLike
        A relative path such as ``"aoi_1/PS-RGB/img1.tif"``; backslashes count as separators.

    Returns
    -------
    PurePosixPath
        The normalized name (``.`` parts dropped).

    Raises
    ------
    OutputError
        For an empty or absolute name, a drive letter, a ``..`` part, a hidden-file part
        starting ``.geopsp`` or a NUL character.

    Examples
    --------
    >>> safe_relative("a/./b.tif")
    PurePosixPath('a/b.tif')
    >>> safe_relative("../x.tif")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geopsp.errors.OutputError: '../x.tif': output names must stay inside the output directory...
    """
    text = os.fspath(name)
    if "\x00" in text:
        raise OutputError(f"{text!r}: output name contains a NUL character; fix the list file")
    norm = text.replace("\\", "/")
    if not norm.strip() or norm.strip() in {".", "/"}:
        raise OutputError(f"{text!r}: empty output name; fix the list file")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or norm.startswith("~"):
        raise OutputError(f"{text!r}: output names must be relative to the output directory; fix the list file")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise OutputError(f"{text!r}: output names must stay inside the output directory (no '..'); fix the list file")
    if any(p.startswith(".geopsp") for p in parts):
        raise OutputError(f"{text!r}: names starting '.geopsp' are reserved for geopsp's own files")
    return PurePosixPath(*parts)


def output_dir_for(out_dir: str | os.PathLike[str], job: Job) -> Path:
    """Return the folder the job's outputs go to, checked to lie inside ``out_dir``.

    Symlinks are resolved, so a link planted inside ``out_dir`` cannot redirect outputs.

    Raises
    ------
    OutputError
        If the folder would resolve outside ``out_dir``.
    """
    root = Path(out_dir).resolve()
    rel = safe_relative(job.rel)  # re-validate: a Job may be built by hand
    target = (root / rel).parent
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise OutputError(f"{job.id}: output folder resolves to {resolved}, outside {root}; remove the symlink")
    return target


def discover_jobs(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    spacenet_products: Sequence[str] = (),
    items_to: str | None = None,
) -> list[Job]:
    """Expand batch inputs into jobs, in input order, without duplicates.

    Parameters
    ----------
    inputs : sequence of str or os.PathLike
        Raster files, directories (searched recursively; SpaceNet and DeepGlobe layouts
        recognised), glob patterns (``**`` allowed) or list files (``.txt``/``.lst``: one path
        per line, ``#`` comments; ``.csv``: a ``path`` column, optionally an ``output`` column
        naming the output relative to the output directory). Relative paths in a list file
        are relative to the list file.
    out_dir : path, optional
        The batch output folder; files below it are never taken as inputs.
    spacenet_products : sequence of str
        SpaceNet image folders to take (``"PS-RGB"``); empty: all.
    items_to : str, optional
        Folder or ``s3://`` prefix the items of an ItemCollection are written to, one each
        (default: ``out_dir/.geopsp-items``).

    Returns
    -------
    list of Job
        One per distinct scene. Outputs mirror input names: a directory's or glob's relative
        sub-paths are kept, a single file keeps only its name.

    Raises
    ------
    InputRasterError
        If an input does not exist, a pattern or directory yields no scene, or a list file
        cannot be read.
    OutputError
        If an output name is unsafe or two scenes would write the same outputs.
    """
    excluded = Path(out_dir).resolve() if out_dir is not None else None
    jobs: list[Job] = []
    seen_scenes: set[Path | str] = set()
    by_id: dict[str, Job] = {}
    for item in inputs:
        items = items_to if items_to is not None else str(excluded / ITEMS_DIR) if excluded is not None else None
        for job in _expand(os.fspath(item), excluded, tuple(spacenet_products), items):
            if job.scene in seen_scenes:
                continue
            if _stem_key(job) in by_id:
                other = by_id[_stem_key(job)]
                raise OutputError(
                    f"{other.scene} and {job.scene} would both write {job.rel.parent / job.stem}_*; "
                    "give their common parent directory so sub-paths are kept, or name outputs in a CSV list"
                )
            seen_scenes.add(job.scene)
            by_id[_stem_key(job)] = job
            jobs.append(job)
    return jobs


def _stem_key(job: Job) -> str:
    # Outputs are named after the stem; compare case-insensitively for case-folding filesystems.
    return (job.rel.parent / job.rel.stem).as_posix().lower()


def _expand(item: str, excluded: Path | None, products: tuple[str, ...], out: str | None) -> Iterator[Job]:
    if is_remote(item):
        if PurePosixPath(scene_name(item)).suffix.lower() in STAC_SUFFIXES:
            yield from _from_stac(item, out)
        else:
            yield Job(item, safe_relative(scene_name(item)))
        return
    path = Path(item).expanduser()
    if path.suffix.lower() in STAC_SUFFIXES and path.is_file():
        yield from _from_stac(str(path.resolve()), out)
    elif is_glob(item) and not path.exists():
        yield from _from_glob(item, excluded)
    elif path.is_dir():
        yield from _from_dir(path, excluded, products)
    elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        yield from _from_list(path)
    elif path.is_file():
        yield Job(path.resolve(), safe_relative(path.name))
    else:
        raise InputRasterError(f"{item}: no such file or directory; check the path")


def _from_glob(pattern: str, excluded: Path | None) -> Iterator[Job]:
    base = _glob_base(pattern)
    matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [p for p in matches if p.is_file() and _is_scene(p) and not _below(p, excluded)]
    if not files:
        raise InputRasterError(f"{pattern}: pattern matched no raster files; check the pattern")
    for p in files:
        yield Job(p.resolve(), _rel_below(p, base))


def _glob_base(pattern: str) -> Path:
    """Return the longest leading part of a glob pattern without magic."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _rel_below(path: Path, base: Path) -> PurePosixPath:
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(path.name)
    return safe_relative(rel.as_posix())


def _from_dir(root: Path, excluded: Path | None, products: tuple[str, ...]) -> Iterator[Job]:
    files = sorted(_walk_scenes(root, excluded, products))
    if not files:
        raise InputRasterError(
            f"{root}: directory holds no raster scenes (looked for {', '.join(sorted(RASTER_SUFFIXES))})"
        )
    deepglobe = any(p.name.lower().endswith("_sat.jpg") for p in files)
    for p in files:
        if deepglobe and p.suffix.lower() in {".jpg", ".jpeg", ".png"} and not p.name.lower().endswith("_sat.jpg"):
            continue  # DeepGlobe: only *_sat.jpg are scenes; *_mask.png are labels
        yield Job(p.resolve(), _rel_below(p, root))


def _walk_scenes(root: Path, excluded: Path | None, products: tuple[str, ...]) -> Iterable[Path]:
    wanted = {p.lower() for p in products}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith(".") or LABEL_DIRS.search(d) or _below(sub, excluded):
                continue
            if wanted and SPACENET_PRODUCTS.match(d) and d.lower() not in wanted:
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            p = here / name
            if name.startswith(".") or not _is_scene(p) or LABEL_FILES.search(name) or OUTPUT_FILES.search(name):
                continue
            yield p


def _is_scene(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES and ".geopsp-tmp-" not in path.name


def _below(path: Path, root: Path | None) -> bool:
    if root is None:
        return False
    resolved = path.resolve()
    return resolved == root or root in resolved.parents


def _from_list(list_file: Path) -> Iterator[Job]:
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputRasterError(f"{list_file}: cannot read list file ({exc}); check the file") from exc
    base = list_file.resolve().parent
    rows = _csv_rows(list_file, text) if list_file.suffix.lower() == ".csv" else _line_rows(text)
    for entry, output in rows:
        if is_remote(entry):
            yield Job(entry, safe_relative(output or scene_name(entry)))
            continue
        src = Path(entry).expanduser()
        scene = src if src.is_absolute() else base / src
        if output is not None:
            try:
                rel = safe_relative(output)
            except OutputError as exc:
                raise OutputError(f"{list_file}: {exc}") from None
            if not rel.suffix:
                rel = rel.with_name(rel.name + scene.suffix)
        elif not src.is_absolute() and ".." not in Path(entry.replace("\\", "/")).parts:
            rel = safe_relative(entry)
        else:
            # The input may live anywhere; its output keeps just the file name.
            rel = safe_relative(scene.name)
        yield Job(Path(os.path.abspath(scene)), rel)


def _line_rows(text: str) -> Iterator[tuple[str, str | None]]:
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield entry, None


def _csv_rows(list_file: Path, text: str) -> Iterator[tuple[str, str | None]]:
    reader = csv.DictReader(text.splitlines())
    fields = {f.strip().lower(): f for f in reader.fieldnames or ()}
    path_col = next((fields[c] for c in CSV_PATH_COLUMNS if c in fields), None)
    if path_col is None:
        raise InputRasterError(
            f"{list_file}: CSV has no path column (looked for {', '.join(CSV_PATH_COLUMNS)}); "
            f"its columns are {', '.join(reader.fieldnames or ()) or 'none'}"
        )
    out_col = next((fields[c] for c in CSV_OUTPUT_COLUMNS if c in fields), None)
    for row in reader:
        entry = (row.get(path_col) or "").strip()
        if not entry:
            continue
        output = (row.get(out_col) or "").strip() if out_col else ""
        yield entry, output or None


def _from_stac(uri: str, out: str | None) -> Iterator[Job]:
    """Make jobs of STAC: an Item is one job, an ItemCollection one per item, written where every worker reads it."""
    import json

    import pystac

    from geopsp.io.source import read_uri

    try:
        doc = json.loads(read_uri(uri, what="STAC file"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputRasterError(f"{uri}: is not JSON ({exc}); give STAC Items or an ItemCollection") from exc
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "Feature":
        yield Job(uri, safe_relative(_item_name(str(doc.get("id", PurePosixPath(uri).stem)))))
        return
    if kind != "FeatureCollection":
        raise InputRasterError(f"{uri}: is neither a STAC Item nor an ItemCollection ({kind or 'no type'})")
    if out is None:
        raise InputRasterError(f"{uri}: an ItemCollection needs a batch output folder or prefix to hold its items")
    try:
        items = pystac.ItemCollection.from_dict(doc, preserve_dict=False)
    except Exception as exc:  # pystac raises several kinds for malformed items
        raise InputRasterError(f"{uri}: is not a valid STAC ItemCollection ({exc})") from exc
    if not len(items):
        raise InputRasterError(f"{uri}: the ItemCollection holds no items")
    base = uri if "://" in uri else Path(uri).resolve().parent.as_uri() + "/"
    for item in items:
        for asset in item.assets.values():  # links relative to the collection file become absolute
            asset.href = _absolute(asset.href, base)
        name = _item_name(item.id)
        yield Job(_write_item(json.dumps(item.to_dict(include_self_link=False)), out, name), safe_relative(name))


def _write_item(text: str, out: str, name: str) -> str:
    """Write one item where every worker reads it: a file in a folder, or an object under an s3:// prefix."""
    import tempfile

    from geopsp.io import s3

    if s3.is_s3_uri(out):
        with tempfile.TemporaryDirectory(prefix="geopsp-item-") as tmp:
            local = Path(tmp) / name
            local.write_text(text)
            s3.upload_file(local, out + name)
        return out + name
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text(text)
    os.replace(tmp_path, path)
    return str(path)


def _item_name(item_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._") + ".json"


def _absolute(href: str, base: str) -> str:
    """Make an asset link read the same from anywhere: a URL, or a ``file://`` URI for a local file.

    (A bare ``/path`` in an item uploaded to S3 would be read as a key of that bucket.)
    """
    from urllib.parse import urljoin

    if "://" in href:
        return href
    if href.startswith("/"):
        return Path(href).as_uri()
    return urljoin(base, href)
