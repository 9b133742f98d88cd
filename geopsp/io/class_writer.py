"""The class raster writer: full-width rows in any order -> an atomic, styled COG and its QA layers.

:class:`ClassRasterWriter` is re-exported by :mod:`geopsp.io.raster`, whose docstring says what
every class raster carries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable
from geopsp.encoding import (
    PROBABILITY_NODATA,
    PROBABILITY_SCALE,
    QA_DESCRIPTIONS,
    encode_probability,
    qa_order,
)
from geopsp.errors import GeopspError, OutputError
from geopsp.io.atomic import StagedOutputs, check_output_path, temp_prefix
from geopsp.io.class_metadata import CLASSES_TAG, pam_xml
from geopsp.io.cog import output_error, quiet_rasterio, refuse_inputs
from geopsp.io.cog_stage import CogSpec, CogStage
from geopsp.style.qa import qa_qml
from geopsp.style.raster import qml_path_for, raster_qml

if TYPE_CHECKING:
    import affine

__all__ = ["ClassRasterWriter"]

logger = logging.getLogger(__name__)

_COMPRESSIONS = ("deflate", "zstd", "lzw")
_STALE_SIDECARS = (".aux.xml", ".ovr", ".msk")


class ClassRasterWriter:
    """Stream a class raster (and optionally a probability raster) to an atomic, styled COG.

    Parameters
    ----------
    path : str or os.PathLike
        Final class raster path (``.tif``). Sidecars: ``<path>.aux.xml`` (category names, RAT)
        and ``<stem>.qml`` (QGIS style).
    width, height : int
        Raster size in pixels.
    crs : rasterio.crs.CRS, str or None
        The input's CRS; None for a scene that is not georeferenced.
    transform : affine.Affine or None
        The input's transform; None (or identity) writes no geotransform.
    classes : ClassTable
        Class ids, names and colours.
    nodata : int
        Value written where the input is nodata; must not be a class id.
    dtype : {"uint8", "uint16"}, default "uint8"
        Pixel type (:attr:`geopsp.model.meta.BundleMeta.output_dtype`).
    compress : {"deflate", "zstd", "lzw"}, default "deflate"
        Compression of the COG(s).
    overwrite : bool, default False
        Replace existing outputs (and their sidecars).
    inputs : sequence of path
        Input files the outputs must not overwrite.
    probability_path : str or os.PathLike, optional
        Also write a uint8 probability raster here (see the module docstring).
    blocksize : int, default 512
        Tile edge of the COG (multiple of 16). Strips of this many rows, at row offsets that
        are multiples of it, are written fastest.
    tags : mapping of str to str, optional
        Extra dataset tags (provenance).
    qa_paths : mapping of str to path, optional
        QA rasters to write, by layer (:data:`~geopsp.encoding.QA_LAYERS`); each gets a
        ``.qml`` colour ramp beside it. ``probability_path`` is the layer ``probability``.

    Raises
    ------
    OutputExistsError
        If an output or one of its sidecars exists and ``overwrite`` is False.
    OutputError
        If an output equals an input or its folder cannot be written.
    ValueError
        If sizes, dtype, nodata, class ids, compression or blocksize are invalid.

    Attributes
    ----------
    write_seconds : float
        Time spent in :meth:`write_rows` and :meth:`write_strip`: compressing the rows and
        reducing them to the overview levels (in the caller's thread: the writer thread of a run).
    finish_seconds : float
        Time :meth:`close` took, after the last row: copying the compressed tiles into the
        COG(s), the sidecars, the commit.

    Notes
    -----
    Use it as a context manager: leaving the block normally calls :meth:`close`, leaving it
    by an exception (including ``KeyboardInterrupt``) calls :meth:`abort`, so nothing is ever
    left under the final names unless complete, and no temporary files remain.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        crs: Any,
        transform: affine.Affine | None,
        classes: ClassTable,
        nodata: int,
        dtype: str = "uint8",
        compress: str = "deflate",
        overwrite: bool = False,
        inputs: Sequence[str | os.PathLike[str]] = (),
        probability_path: str | os.PathLike[str] | None = None,
        blocksize: int = 512,
        tags: Mapping[str, str] | None = None,
        qa_paths: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"raster size must be positive, got {width} x {height}")
        if dtype not in ("uint8", "uint16"):
            raise ValueError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")
        top = np.iinfo(dtype).max
        if not 0 <= nodata <= top:
            raise ValueError(f"nodata {nodata} does not fit {dtype} (0..{top}); use dtype='uint16' or another nodata")
        if classes.max_id > top:
            raise ValueError(f"class id {classes.max_id} does not fit {dtype} (0..{top}); use dtype='uint16'")
        if nodata in classes.ids:
            raise ValueError(
                f"nodata {nodata} is also a class id ({classes.by_id(nodata).name}); choose another nodata"
            )
        if compress.lower() not in _COMPRESSIONS:
            raise ValueError(f"compress must be one of {', '.join(_COMPRESSIONS)}, got {compress!r}")
        if blocksize < 16 or blocksize % 16:
            raise ValueError(f"blocksize must be a positive multiple of 16, got {blocksize}")
        self.width, self.height, self.dtype, self.nodata = int(width), int(height), dtype, int(nodata)
        self.classes = classes
        self.compress = compress.lower()
        self.blocksize = int(blocksize)
        self.overwrite = overwrite
        asked = dict(qa_paths or {})
        if probability_path is not None:
            asked["probability"] = probability_path
        layers = qa_order(asked)
        refuse_inputs([path, *(asked[name] for name in layers)], inputs)
        self.path = check_output_path(path, overwrite=overwrite, inputs=inputs)
        self.qml_path = qml_path_for(self.path)
        self.aux_path = Path(f"{self.path}.aux.xml")
        self.qa_paths: dict[str, Path] = {}
        for layer in layers:
            qa_path = check_output_path(asked[layer], overwrite=overwrite, inputs=inputs)
            if qa_path.resolve() in {p.resolve() for p in (self.path, *self.qa_paths.values())}:
                raise OutputError(f"{qa_path}: the {layer} raster needs a path of its own")
            self.qa_paths[layer] = qa_path
        for side in (self.qml_path, self.aux_path, *map(qml_path_for, self.qa_paths.values())):
            check_output_path(side, overwrite=overwrite, inputs=inputs)
        self._crs = crs
        self._transform = None if transform is None or transform.is_identity else transform
        self._tags = {CLASSES_TAG: classes.to_json(), **dict(tags or {})}
        self._prefix = temp_prefix()
        self._rows = np.zeros(self.height, dtype=np.bool_)
        self._state: Literal["open", "closed", "aborted"] = "open"
        self._final: list[Path] = []
        self.write_seconds = 0.0
        self.finish_seconds = 0.0
        self._stage: CogStage | None = None
        self._qa_stages: dict[str, CogStage] = {}
        try:
            cmap = {c.id: (*c.color, 255) for c in classes}
            cmap[nodata] = (0, 0, 0, 0)
            spec = self._spec(dtype, nodata, "MODE", colormap=cmap, description="class")
            self._stage = CogStage(spec, lambda tag: self._temp(self.path, tag))
            scale = {"scale": 1.0 / PROBABILITY_SCALE, "offset": 0.0}
            for name, qa_path in self.qa_paths.items():
                # probability keeps its band description of old; the others say what they hold
                about = "probability" if name == "probability" else f"{name}: {QA_DESCRIPTIONS[name]}"
                spec = self._spec("uint8", PROBABILITY_NODATA, "AVERAGE", description=about, **scale)
                self._qa_stages[name] = CogStage(spec, self._namer(qa_path))
        except BaseException as exc:
            self.abort()
            if isinstance(exc, GeopspError) or not isinstance(exc, Exception):
                raise
            raise output_error(self.path, exc, "creating the output") from exc
        logger.debug("writing %s (%d x %d %s) via %s*", self.path, width, height, dtype, self._prefix)

    @property
    def probability_path(self) -> Path | None:
        """The probability raster (the QA layer ``probability``), if written."""
        return self.qa_paths.get("probability")

    # -- temporaries -------------------------------------------------------------------------

    def _namer(self, final: Path) -> Callable[[str], Path]:
        """Return ``tag -> temporary name`` of one output (a stage's staging files)."""
        return lambda tag: self._temp(final, tag)

    def _temp(self, final: Path, tag: str = "") -> Path:
        return final.with_name(f"{self._prefix}{tag}{final.name}")

    def _spec(self, dtype: str, nodata: int, resampling: Literal["MODE", "AVERAGE"], **kw: Any) -> CogSpec:
        return CogSpec(
            self.width, self.height, dtype, nodata, self.blocksize, self.compress, resampling,
            crs=self._crs, transform=self._transform, tags=self._tags, **kw,
        )  # fmt: skip

    # -- writing -----------------------------------------------------------------------------

    def write_rows(
        self,
        row_off: int,
        class_rows: NDArray[np.integer[Any]],
        probability_rows: NDArray[Any] | None = None,
        *,
        layers: Mapping[str, NDArray[Any]] | None = None,
    ) -> None:
        """Write full-width rows ``[row_off, row_off + h)``; strips may come in any order.

        Parameters
        ----------
        row_off : int
            First row, 0-based.
        class_rows : ndarray of int
            ``(h, width)`` class ids (or nodata); any integer dtype whose values fit.
        probability_rows : ndarray, optional
            ``(h, width)``: uint8 already encoded (see :func:`~geopsp.encoding.encode_probability`;
            0 is nodata) or floats in 0..1 (encoded here; NaN is nodata). Needs
            ``probability_path``. Pixels where the class is nodata are stored as nodata too.
        layers : mapping of str to ndarray, optional
            Rows of QA layers by name, each as ``probability_rows`` (which is the layer
            ``probability``); each needs its path in ``qa_paths``.

        Raises
        ------
        ValueError
            On a wrong shape, an out-of-range row or value, or a QA layer without its path.
        OutputError
            If the write fails (``"disk full"`` when the disk is full).
        """
        from rasterio.errors import RasterioError

        t0 = time.perf_counter()
        if self._state != "open" or self._stage is None:
            raise OutputError(f"{self.path}: the writer is already {self._state}; open a new one")
        arr = np.asarray(class_rows)
        if arr.ndim != 2 or arr.shape[1] != self.width:
            raise ValueError(f"class rows must have shape (h, {self.width}), got {arr.shape}")
        h = arr.shape[0]
        if h < 1 or row_off < 0 or row_off + h > self.height:
            raise ValueError(f"rows {row_off}..{row_off + h - 1} are outside the raster's 0..{self.height - 1}")
        arr = self._as_dtype(arr)
        given = dict(layers or {})
        if probability_rows is not None:
            given["probability"] = probability_rows
        for name, rows in given.items():  # every layer checked before anything is written
            self._check_qa_rows(name, rows, arr.shape)
        invalid = arr == self.nodata if given else None  # the plain class rows' path compares nothing
        try:
            self._stage.write(row_off, arr)
            for name, rows in given.items():  # encoded one at a time: one layer's copy held, not all
                assert invalid is not None
                self._qa_stages[name].write(row_off, self._qa_rows(rows, invalid))
        except (RasterioError, OSError) as exc:
            raise output_error(self.path, exc, f"writing rows {row_off}-{row_off + h - 1}") from exc
        self._rows[row_off : row_off + h] = True
        self.write_seconds += time.perf_counter() - t0

    def _check_qa_rows(self, name: str, rows: NDArray[Any], shape: tuple[int, ...]) -> None:
        """Refuse a QA layer this writer has no path for, or rows of another shape or type."""
        if name not in self._qa_stages:
            what = "probabilities were" if name == "probability" else f"{name} rows were"
            raise ValueError(f"{what} given but the writer has no path for the {name} raster")
        values = np.asarray(rows)
        if values.shape != shape:
            raise ValueError(f"{name} rows must have shape {shape}, got {values.shape}")
        if values.dtype != np.uint8 and values.dtype.kind != "f":
            raise ValueError(f"{name} rows must be uint8 (encoded) or float in 0..1, got {values.dtype}")

    @staticmethod
    def _qa_rows(rows: NDArray[Any], invalid: NDArray[np.bool_]) -> NDArray[np.uint8]:
        """Encode one QA layer's checked rows; nodata wherever the class is."""
        values = np.asarray(rows)
        if values.dtype == np.uint8:
            return np.where(invalid, np.uint8(PROBABILITY_NODATA), values)
        return encode_probability(values, invalid=invalid)

    def write_strip(
        self,
        row_off: int,
        classes: str | os.PathLike[str],
        probability: str | os.PathLike[str] | None = None,
        *,
        layers: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> None:
        """Write rows ``row_off ..`` from a strip's class raster (and its QA rasters).

        A strip is a raster of consecutive rows made by a writer of the same settings
        (:func:`geopsp.batch.strips.stitch_strips`). Its compressed tiles are copied as they are
        when they fit (same compression and block size, starting on a block row and ending on
        one or at the end), and its pixels read once for the overviews; otherwise its rows are
        read and written as by :meth:`write_rows`. ``probability`` is the QA layer
        ``probability``; ``layers`` names the strip's QA rasters by layer.

        Raises
        ------
        ValueError
            If the strip's size or pixel type does not fit this raster, or a QA raster is
            given whose layer this writer does not write.
        OutputError
            If a strip cannot be read or a write fails.
        """
        import rasterio
        from rasterio.errors import RasterioError

        t0 = time.perf_counter()
        if self._state != "open" or self._stage is None:
            raise OutputError(f"{self.path}: the writer is already {self._state}; open a new one")
        given = dict(layers or {})
        if probability is not None:
            given["probability"] = probability
        for name in given:
            if name not in self._qa_stages:
                raise ValueError(f"a {name} strip was given but the writer has no path for the {name} raster")
        sources = [(self._stage, Path(classes), self.dtype)]
        sources += [(self._qa_stages[name], Path(p), "uint8") for name, p in given.items()]
        h = 0
        try:
            for stage, path, dtype in sources:
                with quiet_rasterio(), rasterio.open(path) as src:
                    h, shape = src.height, (src.height, src.width, src.dtypes[0])
                if shape[1:] != (self.width, dtype) or not 0 <= row_off <= self.height - h:
                    raise ValueError(f"{path}: {shape} does not fit rows {row_off}.. of {self.height} x {self.width}")
                stage.write_strip(row_off, path)
        except (RasterioError, OSError) as exc:
            raise output_error(self.path, exc, f"writing the strip {classes}") from exc
        self._rows[row_off : row_off + h] = True
        self.write_seconds += time.perf_counter() - t0

    def _as_dtype(self, arr: NDArray[Any]) -> NDArray[Any]:
        if arr.dtype == np.dtype(self.dtype):
            return arr
        if arr.dtype.kind not in "iub":
            raise ValueError(f"class rows must be integers, got {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        top = np.iinfo(self.dtype).max
        if lo < 0 or hi > top:
            raise ValueError(f"class values {lo}..{hi} do not fit the output's {self.dtype} (0..{top})")
        return arr.astype(self.dtype)

    # -- finishing ---------------------------------------------------------------------------

    def close(self, outputs: StagedOutputs | None = None) -> list[Path]:
        """Finish: build the COG(s) and sidecars, then commit them (class raster last).

        Parameters
        ----------
        outputs : StagedOutputs, optional
            Stage the finished files in this set instead of committing them; they reach
            their final names when the caller commits the set with its other outputs (or
            are removed with it). The set's ``overwrite`` applies.

        Returns
        -------
        list of Path
            The class raster, the QA rasters (if any, in :data:`~geopsp.encoding.QA_LAYERS`
            order), the ``.qml`` style, the ``.aux.xml`` (category names, RAT) and the QA
            rasters' ``.qml`` styles, in that order.

        Raises
        ------
        OutputError
            If some rows were never written, or finishing fails (``"disk full"`` when the disk
            is full); nothing is left under the final names and the temporaries are removed.
        OutputExistsError
            If another process created an output meanwhile and ``overwrite`` is False.
        """
        if self._state == "closed":
            return list(self._final)
        if self._state == "aborted":
            raise OutputError(f"{self.path}: the writer was aborted; nothing was written")
        t0 = time.perf_counter()
        try:
            missing = np.flatnonzero(~self._rows)
            if missing.size:
                raise OutputError(
                    f"{self.path}: rows {missing[0]}-{missing[-1]} ({missing.size} rows) were never written; "
                    f"the output is incomplete and was not saved"
                )
            moves = self._finish()
            self._commit(moves, outputs)
        except BaseException as exc:
            # judged before the temporaries go: their removal frees the disk a full one had
            error = None if isinstance(exc, GeopspError) else output_error(self.path, exc, "finishing the output")
            self.abort()
            if error is None or not isinstance(exc, Exception):
                raise
            raise error from exc
        self._state = "closed"
        self.finish_seconds = time.perf_counter() - t0
        self._final = [final for _, final in moves]
        qa_styles = [qml_path_for(p) for p in self.qa_paths.values()]
        order = [self.path, *self.qa_paths.values(), self.qml_path, self.aux_path, *qa_styles]
        self._final = [p for p in order if p in self._final]
        if outputs is None:
            logger.info("wrote %s", self.path)
        else:
            logger.debug("finished %s; it is committed with its set", self.path)
        return list(self._final)

    def _finish(self) -> list[tuple[Path, Path]]:
        """Build every output under a temporary name; return (temporary, final) pairs, main file last."""
        assert self._stage is not None
        moves: list[tuple[Path, Path]] = []
        qml_tmp = self._temp(self.qml_path)
        qml_tmp.write_text(raster_qml(self.classes, nodata=self.nodata), encoding="utf-8")
        moves.append((qml_tmp, self.qml_path))
        cog_tmp = self._temp(self.path)
        self._stage.finish(cog_tmp)
        aux_tmp = Path(f"{cog_tmp}.aux.xml")
        aux_tmp.write_text(pam_xml(self.classes, nodata=self.nodata), encoding="utf-8")
        moves.append((aux_tmp, self.aux_path))
        for name, qa_path in self.qa_paths.items():
            qa_tmp = self._temp(qa_path)
            self._qa_stages[name].finish(qa_tmp)
            moves.append((qa_tmp, qa_path))
            style_tmp = self._temp(qml_path_for(qa_path))
            style_tmp.write_text(qa_qml(name), encoding="utf-8")
            moves.append((style_tmp, qml_path_for(qa_path)))
        moves.append((cog_tmp, self.path))
        return moves

    def _commit(self, moves: list[tuple[Path, Path]], outputs: StagedOutputs | None) -> None:
        own = outputs is None
        staged = StagedOutputs(overwrite=self.overwrite) if outputs is None else outputs
        for tmp, final in moves:
            staged.add(tmp, final, marker=own and final == self.path)
        if staged.overwrite:
            # Sidecars of a previous output (external overviews, masks, PAM) would apply to the new one.
            finals = [final for _, final in moves]
            for raster in (self.path, *self.qa_paths.values()):
                for suffix in _STALE_SIDECARS:
                    stale = Path(f"{raster}{suffix}")
                    if stale not in finals:
                        staged.remove(stale)
        if own:
            staged.commit()

    def abort(self) -> None:
        """Drop everything written so far: close the staging files and remove all temporaries.

        Safe to call more than once, and after a failed :meth:`close`.
        """
        if self._state == "closed":
            return
        self._state = "aborted"
        stages = [getattr(self, "_stage", None), *getattr(self, "_qa_stages", {}).values()]
        self._stage = None
        self._qa_stages = {}
        for stage in stages:
            if stage is not None:
                with contextlib.suppress(Exception):
                    stage.abort()
        folders = {self.path.parent, *(p.parent for p in getattr(self, "qa_paths", {}).values())}
        for folder in folders:
            for tmp in folder.glob(f"{self._prefix}*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def __enter__(self) -> ClassRasterWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
