"""One Cloud-Optimized GeoTIFF built while its rows are written, so little is left to do at the end.

The rows go, compressed as the COG wants them, into a tiled staging GeoTIFF; as they arrive in
order, :class:`~geopsp.io.overviews.OverviewPyramid` reduces them to every overview level
(GDAL's MODE for classes, AVERAGE for probabilities), and each level's finished block rows go
to a staging file of their own. All of that runs where the rows are written (the writer
thread, beside the model). Meanwhile a background thread has GDAL write the COG's skeleton:
its header and directories with no tile in it. Finishing then only copies the compressed
tiles into the skeleton (:func:`~geopsp.io.tiff_layout.assemble_cog`): no pixel is decoded
or encoded after the last row.

If rows came out of order the overview levels are computed at the end from the staging file
instead; if the tiles cannot be copied (:class:`~geopsp.io.tiff_layout.LayoutError`, e.g. a
classic TIFF past 4 GiB), GDAL copies the staging file and its levels into the COG.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from geopsp.io.cog import cog_options, quiet_rasterio, to_cog, with_overviews
from geopsp.io.cog_spec import CogSpec
from geopsp.io.overviews import OverviewPyramid, overview_sizes, reducer
from geopsp.io.tiff_layout import (
    LayoutError,
    TiffLayout,
    TileRun,
    assemble_cog,
    fits_at,
    read_layout,
    read_tiles,
    splice,
)

if TYPE_CHECKING:
    import rasterio

__all__ = ["CogSpec", "CogStage"]

logger = logging.getLogger(__name__)

_REDUCING = 2
"""Block rows whose overviews may be in flight while more rows are written."""


class CogStage:
    """Stage one COG: full-resolution tiles and overview levels as the rows arrive.

    Parameters
    ----------
    spec : CogSpec
        The COG.
    temp : callable
        ``temp(tag)``: a temporary path for one of this stage's files (the caller removes
        every temporary on abort).
    """

    def __init__(self, spec: CogSpec, temp: Callable[[str], Path]) -> None:
        import rasterio

        self.spec = spec
        self._temp = temp
        self.stage_path = temp("stage-")
        self.sizes = overview_sizes(spec.width, spec.height, spec.blocksize)
        self._levels: list[rasterio.io.DatasetWriter] = []
        self._level_paths = [temp(f"ovr{k + 1}-") for k in range(len(self.sizes))]
        self._buffers: list[NDArray[Any]] = []
        self._fill = [0] * len(self.sizes)
        self._level_done = [0] * len(self.sizes)  # rows of each level made so far
        self._root = 0  # the level the pyramid takes its rows at (strips may give it their own levels)
        self._next_row = 0
        # per image (0: full resolution, k: level k), first block row -> tiles copied from a strip
        self._strips: list[dict[int, TileRun]] = [{} for _ in range(len(self.sizes) + 1)]
        self._skeleton: Path | None = None
        self._skeleton_error: BaseException | None = None
        self._dst: rasterio.io.DatasetWriter | None = None
        self._pyramid: OverviewPyramid | None = None
        self._skeleton_job: threading.Thread | None = None
        # the overviews of rows written in order are reduced in a thread of their own, beside
        # the encoding of the rows (GDAL and NumPy both release the GIL): two cores, not one
        self._reducer: ThreadPoolExecutor | None = None
        self._reducing: deque[Future[None]] = deque()
        try:
            with quiet_rasterio():
                self._dst = rasterio.open(self.stage_path, "w", **spec.profile())
            spec.decorate(self._dst)
            self._pyramid = self._new_pyramid()
            # The skeleton depends on nothing but the spec: GDAL writes it while the rows come.
            self._skeleton_job = threading.Thread(
                target=self._make_skeleton, args=(self._write_templates(),), name="geopsp-cog-skeleton", daemon=True
            )
            self._skeleton_job.start()
        except BaseException:
            self.abort()
            raise

    # -- rows ---------------------------------------------------------------------------------

    def _new_pyramid(self, root: int = 0) -> OverviewPyramid | None:
        """Open the level files (once) and return a pyramid fed at level ``root`` (0: full resolution)."""
        import rasterio

        if not self.sizes:
            return None
        if not self._levels:
            with quiet_rasterio():
                for (w, h), path in zip(self.sizes, self._level_paths, strict=True):
                    self._levels.append(rasterio.open(path, "w", **self.spec.profile(w, h)))
            self._buffers = [np.empty((min(self.spec.blocksize, h), w), self.spec.dtype) for w, h in self.sizes]
        self._root = root
        width, height = (self.spec.width, self.spec.height) if root == 0 else self.sizes[root - 1]
        return OverviewPyramid(
            width,
            height,
            self.sizes[root:],
            reduce=reducer(self.spec.resampling),
            nodata=self.spec.nodata,
            sink=lambda level, row_off, rows: self._level_rows(level + root, row_off, rows),
        )

    def write(self, row_off: int, rows: NDArray[Any]) -> None:
        """Write full-width rows at ``row_off`` (any order; in order the overviews come for free)."""
        from rasterio.windows import Window

        assert self._dst is not None
        self._dst.write(rows[np.newaxis], [1], window=Window(0, row_off, self.spec.width, rows.shape[0]))
        if self._reducer is None:
            self._reducer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geopsp-overviews")
        self._reducing.append(self._reducer.submit(self._overview_rows, row_off, rows.copy()))
        while len(self._reducing) > _REDUCING:  # bounded: a few block rows wait at most
            self._reducing.popleft().result()

    def _drain(self) -> None:
        """Wait for the overview rows in flight (raising their error); every other use of the levels calls it first."""
        while self._reducing:
            self._reducing.popleft().result()

    def _overview_rows(self, row_off: int, rows: NDArray[Any]) -> None:
        if row_off == self._next_row and self._pyramid is not None and self._root == 0:
            self._pyramid.push(rows)
        elif self._pyramid is not None:
            logger.debug("%s: rows out of order; its overviews are computed at the end", self.stage_path)
            self._pyramid = None
        self._next_row = row_off + rows.shape[0] if row_off == self._next_row else -1

    def _level_rows(self, level: int, row_off: int, rows: NDArray[Any]) -> None:
        """Collect a level's rows into its block-row buffer; write the buffer when it is full."""
        from rasterio.windows import Window

        k = level - 1
        buf, (w, h) = self._buffers[k], self.sizes[k]
        done = 0
        while done < rows.shape[0]:
            n = min(rows.shape[0] - done, buf.shape[0] - self._fill[k])
            buf[self._fill[k] : self._fill[k] + n] = rows[done : done + n]
            self._fill[k] += n
            done += n
            if self._fill[k] == buf.shape[0] or row_off + done == h:
                top = row_off + done - self._fill[k]
                self._levels[k].write(buf[np.newaxis, : self._fill[k]], [1], window=Window(0, top, w, self._fill[k]))
                self._fill[k] = 0
        self._level_done[k] = row_off + rows.shape[0]

    def copy_tiles(self, row_off: int, path: Path) -> bool:
        """Take the full-resolution tiles of rows ``row_off ..`` from a COG of those rows, if they fit.

        They fit when ``path``'s tiles decode like this COG's (same compression, tiling and
        pixel type), start on a block row and end on one (or at the end of the raster). The
        caller still passes the rows' pixels to :meth:`overview_rows`, in order.

        Returns
        -------
        bool
            Whether the tiles were taken (else write the rows with :meth:`write`).
        """
        self._drain()
        bs = self.spec.blocksize
        try:
            ifd = read_layout(path).ifds[0]
            fits = fits_at(ifd, self._skeleton_layout().ifds[0], row_off)
            if fits:
                self._strips[0][row_off // bs] = read_tiles(path, ifd)
        except (LayoutError, OSError) as exc:
            logger.debug("%s: its tiles cannot be copied (%s)", path, exc)
            return False
        return fits

    def overview_rows(self, row_off: int, rows: NDArray[Any]) -> None:
        """Pass the pixels of rows whose tiles :meth:`copy_tiles` took to the overview levels."""
        self._drain()
        self._overview_rows(row_off, rows)

    def write_strip(self, row_off: int, path: Path) -> bool:
        """Write the rows of a strip raster at ``row_off``: its tiles copied if they fit, else its pixels.

        When the tiles are copied, the strip's own overview levels down to :meth:`_strip_root`
        are this raster's rows there: their tiles are copied too where they lie on the level's
        block rows (:meth:`_copy_levels`), the other levels are read (a third of the pixels, or
        fewer) and written again, and the coarser levels are computed from the deepest one.
        Otherwise its pixels are read, one block row at a time, for the overviews or to be
        written.

        Returns
        -------
        bool
            Whether its compressed tiles were copied.
        """
        import rasterio
        from rasterio.windows import Window

        copied = self.copy_tiles(row_off, path)
        root = self._strip_root(row_off, path) if copied else 0
        taken = self._copy_levels(row_off, path, root)
        feed = self._pyramid is not None and root < len(self.sizes)  # coarser levels are computed from root
        bs = self.spec.blocksize
        with quiet_rasterio():
            for level in range(1, root + 1):
                if level in taken and not (level == root and feed):
                    continue
                with rasterio.open(path, overview_level=level - 1) as src:
                    for r in range(0, src.height, bs):
                        rows = src.read(1, window=Window(0, r, src.width, min(bs, src.height - r)))
                        if level not in taken:
                            self._level_rows(level, (row_off >> level) + r, rows)
                        if level == root and feed:
                            assert self._pyramid is not None
                            self._pyramid.push(rows)
            with rasterio.open(path) as src:
                if root:
                    self._next_row = row_off + src.height
                    return True
                for r in range(0, src.height, bs):
                    rows = src.read(1, window=Window(0, r, src.width, min(bs, src.height - r)))
                    if copied:
                        self.overview_rows(row_off + r, rows)
                    else:
                        self.write(row_off + r, rows)
        return copied

    def _copy_levels(self, row_off: int, path: Path, root: int) -> set[int]:
        """Take a strip's level tiles, for levels ``1 .. root`` whose rows lie on block rows; return those levels.

        Level ``k`` of the strip is this raster's from row ``row_off >> k`` (:meth:`_strip_root`),
        so its tiles are this raster's where :func:`~geopsp.io.tiff_layout.fits_at` says so.
        """
        taken: set[int] = set()
        if not root:
            return taken
        try:
            ifds, skeleton = read_layout(path).ifds, self._skeleton_layout().ifds
            for level in range(1, root + 1):
                top = row_off >> level
                if self._fill[level - 1] == 0 and fits_at(ifds[level], skeleton[level], top):
                    self._strips[level][top // self.spec.blocksize] = read_tiles(path, ifds[level])
                    self._level_done[level - 1] = top + ifds[level].height
                    taken.add(level)
        except (LayoutError, OSError, IndexError) as exc:
            logger.debug("%s: its overview tiles cannot be copied (%s)", path, exc)
        return taken

    def _strip_root(self, row_off: int, path: Path) -> int:
        """Return the deepest overview level of a strip that equals this raster's there (0: none).

        A strip on block rows computes its levels from windows aligned with the raster's as
        long as every level's height is even down to there: levels ``1 .. k`` for ``2**k``
        dividing both the block size and the raster's height (and as far as the strip has
        levels). Every strip of a raster is fed at the same level; one that cannot be leaves
        the overviews to be computed at the end.
        """
        import rasterio

        def twos(n: int) -> int:
            return (n & -n).bit_length() - 1

        if self._pyramid is None or row_off != self._next_row:
            return 0
        with quiet_rasterio(), rasterio.open(path) as src:
            levels = len(src.overviews(1))
        root = min(twos(self.spec.blocksize), twos(self.spec.height), levels, len(self.sizes))
        if row_off == 0:  # the first strip: nothing reached the pyramid yet
            self._pyramid = self._new_pyramid(root)
            return root
        if root < self._root:
            logger.debug(
                "%s: strip %s has too few levels; the overviews are computed at the end", self.stage_path, path
            )
            self._pyramid = None
            return 0
        return self._root

    # -- finishing ----------------------------------------------------------------------------

    def _write_templates(self) -> list[Path]:
        """Write an empty (sparse) GeoTIFF like the COG, and one per overview level: GDAL copies no pixel of them."""
        import rasterio

        paths = [self._temp("tmpl-"), *(self._temp(f"tmpl{k + 1}-") for k in range(len(self.sizes)))]
        with quiet_rasterio():
            with rasterio.open(paths[0], "w", **self.spec.profile()) as dst:
                self.spec.decorate(dst)
            for (w, h), path in zip(self.sizes, paths[1:], strict=True):
                with rasterio.open(path, "w", **self.spec.profile(w, h)):
                    pass
        return paths

    def _make_skeleton(self, templates: list[Path]) -> None:
        """Have GDAL write the COG with no tile in it (runs in a thread; opens nothing with rasterio)."""
        import rasterio.shutil

        vrt = templates[0].with_name(templates[0].name + ".vrt")  # keeps the output's name: found as its temporary
        try:
            skeleton = self._temp("skel-")
            rasterio.shutil.copy(
                with_overviews(templates[0], templates[1:], vrt),
                skeleton,
                **cog_options(compress=self.spec.compress, blocksize=self.spec.blocksize, sparse=True),
            )
            self._skeleton = skeleton
        except BaseException as exc:  # re-raised by finish()
            self._skeleton_error = exc
        finally:
            for p in (*templates, vrt):
                p.unlink(missing_ok=True)

    def _skeleton_layout(self) -> TiffLayout:
        """Wait for the skeleton; return its layout."""
        assert self._skeleton_job is not None
        self._skeleton_job.join()
        if self._skeleton_error is not None:
            raise self._skeleton_error
        assert self._skeleton is not None
        return read_layout(self._skeleton)

    def finish(self, out: Path) -> None:
        """Write the COG to ``out`` and remove the staging files."""
        self._drain()
        self._close_writers()
        if self.sizes and (self._pyramid is None or self._level_done != [h for _, h in self.sizes]):
            self._overviews_from_stage()
        skeleton = self._skeleton_layout()
        try:
            self._assemble(skeleton, out)
        except LayoutError as exc:
            logger.debug("%s: its tiles cannot be copied (%s); GDAL encodes the COG again", out, exc)
            self._stage_strips()
            to_cog(
                self.stage_path,
                out,
                overviews=self._level_paths,
                compress=self.spec.compress,
                blocksize=self.spec.blocksize,
            )
        for p in (self.stage_path, *self._level_paths, self._skeleton):
            if p is not None:
                p.unlink(missing_ok=True)
                Path(f"{p}.aux.xml").unlink(missing_ok=True)

    def _close_writers(self) -> None:
        if self._reducer is not None:
            self._reducer.shutdown(wait=True)
            self._reducer = None
        for dst in (self._dst, *self._levels):
            if dst is not None:
                dst.close()
        self._dst = None
        self._levels = []

    def _overviews_from_stage(self) -> None:
        """Compute the overview levels from the staged full resolution (rows came out of order)."""
        import rasterio
        from rasterio.windows import Window

        # rows of copied tiles came out of order too (rare): stage their pixels (the levels are made again)
        self._stage_strips(levels=False)
        self._fill = [0] * len(self.sizes)
        self._level_done = [0] * len(self.sizes)
        self._pyramid = self._new_pyramid()
        assert self._pyramid is not None
        bs = self.spec.blocksize
        with quiet_rasterio(), rasterio.open(self.stage_path) as src:
            for r in range(0, self.spec.height, bs):
                self._pyramid.push(src.read(1, window=Window(0, r, self.spec.width, min(bs, self.spec.height - r))))
        self._close_writers()

    def _assemble(self, skeleton: TiffLayout, out: Path) -> None:
        assert self._skeleton is not None
        images = [  # staged block rows, and the strips' where their tiles were taken
            splice(read_tiles(p, read_layout(p).ifds[0]), taken)
            for p, taken in zip((self.stage_path, *self._level_paths), self._strips, strict=True)
        ]
        if len(images) != len(skeleton.ifds):
            raise LayoutError(f"{self._skeleton}: {len(skeleton.ifds)} images where {len(images)} were staged")
        assemble_cog(self._skeleton, images, out, blank=self._blank_tile())

    def _blank_tile(self) -> bytes:
        """Return one tile of nodata, compressed like the COG's (for tiles left out of a sparse file)."""
        import rasterio

        path = self._temp("blank-")
        bs = self.spec.blocksize
        try:
            profile = {**self.spec.profile(bs, bs), "sparse_ok": False}
            with quiet_rasterio(), rasterio.open(path, "w", **profile) as dst:
                dst.write(np.full((1, bs, bs), self.spec.nodata, self.spec.dtype))
            run = read_tiles(path, read_layout(path).ifds[0])
            with open(path, "rb") as f:
                f.seek(int(run.offsets[0]))
                return f.read(int(run.counts[0]))
        finally:
            path.unlink(missing_ok=True)

    def _stage_strips(self, levels: bool = True) -> None:
        """Write the copied strips' pixels into the staging files (for GDAL's copy, or to read the overviews from).

        With ``levels`` False only the full resolution is staged, and the levels' copied tiles
        are dropped (the levels are to be computed again).
        """
        import rasterio
        from rasterio.windows import Window

        bs, paths = self.spec.blocksize, (self.stage_path, *self._level_paths)
        with quiet_rasterio():
            for level, (path, taken) in enumerate(zip(paths, self._strips, strict=True)):
                if not taken or (level and not levels):
                    continue
                with rasterio.open(path, "r+") as dst:
                    for br, run in sorted(taken.items()):
                        with rasterio.open(run.path, **({"overview_level": level - 1} if level else {})) as src:
                            for r in range(0, src.height, bs):
                                rows = src.read(1, window=Window(0, r, src.width, min(bs, src.height - r)))
                                dst.write(rows[np.newaxis], [1], window=Window(0, br * bs + r, *rows.shape[::-1]))
        for taken in self._strips:
            taken.clear()

    def abort(self) -> None:
        """Close every file (the caller removes the temporaries); wait for the skeleton and overview threads."""
        for fut in self._reducing:
            fut.cancel()
        if self._reducer is not None:
            self._reducer.shutdown(wait=True)
        self._reducing.clear()
        for dst in (self._dst, *self._levels):
            if dst is not None:
                with contextlib.suppress(Exception):
                    dst.close()
        self._dst = None
        self._levels = []
        if self._skeleton_job is not None:
            self._skeleton_job.join()
