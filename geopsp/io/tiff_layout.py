"""Assemble a Cloud-Optimized GeoTIFF from tiles that are already compressed, copying their bytes.

GDAL's COG driver always decodes its source and encodes every tile again (GDAL 3.10 copies
compressed tiles as they are only for JPEG), so turning a staged raster into a COG costs a
full encode after the last row is written. Here GDAL writes only the *skeleton* of the COG:
its header, ghost area and image file directories (IFDs), with every tile left out
(``SPARSE_OK``: byte counts of 0). :func:`assemble_cog` then appends the tiles in the COG
order (smallest overview first, full resolution last; tiles row by row), each with the
layout GDAL announces in the ghost area (``BLOCK_LEADER=SIZE_AS_UINT4``: the tile's size as a
little-endian uint32 before it; ``BLOCK_TRAILER=LAST_4_BYTES_REPEATED``: its last 4 bytes
again after it), and writes their offsets and sizes into the IFDs' tile arrays in place.

The tiles come from plain tiled GeoTIFFs with the same compression, tile size and pixel type
(the staging files, or the strips of a scene); :func:`compatible` says whether a file's IFD
can lend its tiles to a skeleton's. Anything unexpected raises :class:`LayoutError`, and the
caller falls back to GDAL's own (re-encoding) copy.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Ifd",
    "LayoutError",
    "TileRun",
    "TiffLayout",
    "assemble_cog",
    "compatible",
    "fits_at",
    "read_layout",
    "read_tiles",
    "splice",
]

_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
_INTS = {3: "H", 4: "I", 16: "Q"}  # the types a tile array may have
_ARRAYS = {3: "<u2", 4: "<u4", 16: "<u8"}
# what decides how a tile's bytes decode: bits, compression, bands, planar, predictor, sample
# format, tile size; with TIFF's defaults for the optional ones
_SAME = {258: None, 259: None, 277: (1,), 284: (1,), 317: (1,), 339: (1,), 322: None, 323: None}


class LayoutError(ValueError):
    """A TIFF this module does not assemble (the caller then lets GDAL copy the pixels)."""


@dataclass(frozen=True, slots=True)
class TileArray:
    """Where the values of an IFD's tile offsets or tile byte counts are stored."""

    type: int
    count: int
    at: int


@dataclass(frozen=True, slots=True)
class Ifd:
    """One image (the full resolution or an overview) of a tiled TIFF."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    fields: tuple[tuple[int, tuple[int, ...]], ...]
    """The integer fields that decide how a tile's bytes decode (see ``_SAME``)."""
    offsets: TileArray
    counts: TileArray

    @property
    def tiles(self) -> int:
        """Return the number of tiles."""
        return self.tiles_across * -(-self.height // self.tile_height)

    @property
    def tiles_across(self) -> int:
        """Return the number of tiles in a row."""
        return -(-self.width // self.tile_width)


@dataclass(frozen=True, slots=True)
class TiffLayout:
    """The IFDs of a little-endian tiled TIFF or BigTIFF and where its header ends."""

    bigtiff: bool
    ifds: tuple[Ifd, ...]
    header_end: int
    """First byte after every IFD and tag value (the file's size for a skeleton)."""


@dataclass(frozen=True, slots=True)
class TileRun:
    """Consecutive tiles (row by row) of one image, taken from one file.

    Attributes
    ----------
    path : Path
        The file holding them.
    ifd : Ifd
        The image they belong to in ``path`` (how they decode).
    offsets, counts : ndarray of int64
        Each tile's offset and size in ``path``; a size of 0 is a tile left out (sparse),
        which reads as nodata.
    """

    path: Path
    ifd: Ifd
    offsets: NDArray[np.int64]
    counts: NDArray[np.int64]

    def part(self, start: int, stop: int) -> TileRun:
        """Return tiles ``start .. stop - 1`` of the run."""
        return TileRun(self.path, self.ifd, self.offsets[start:stop], self.counts[start:stop])


def _values(buf: bytes, fmt: str, count: int) -> tuple[int, ...]:
    return struct.unpack(f"<{count}{fmt}", buf[: struct.calcsize(f"<{count}{fmt}")])


def read_layout(path: str | os.PathLike[str]) -> TiffLayout:
    """Read the IFDs of a tiled, little-endian TIFF (header and directories only).

    Raises
    ------
    LayoutError
        If the file is big-endian, striped, or not a TIFF.
    """
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:2] != b"II" or struct.unpack("<H", head[2:4])[0] not in (42, 43):
            raise LayoutError(f"{path}: not a little-endian TIFF")
        big = struct.unpack("<H", head[2:4])[0] == 43
        off = struct.unpack("<Q", head[8:16])[0] if big else struct.unpack("<I", head[4:8])[0]
        entry, count_fmt, off_fmt = (20, "Q", "Q") if big else (12, "H", "I")
        ifds: list[Ifd] = []
        end = 16 if big else 8
        while off:
            f.seek(off)
            n = struct.unpack(f"<{count_fmt}", f.read(struct.calcsize(count_fmt)))[0]
            raw = f.read(n * entry + struct.calcsize(off_fmt))
            end = max(end, off + struct.calcsize(count_fmt) + len(raw))
            fields: dict[int, tuple[int, ...]] = {}
            arrays: dict[int, TileArray] = {}
            for i in range(n):
                e = raw[i * entry : (i + 1) * entry]
                tag, typ = struct.unpack("<HH", e[:4])
                count = struct.unpack(f"<{off_fmt}", e[4 : 4 + struct.calcsize(off_fmt)])[0]
                value = e[4 + struct.calcsize(off_fmt) :]
                size = _TYPES.get(typ, 1) * count
                at = off + struct.calcsize(count_fmt) + i * entry + 4 + struct.calcsize(off_fmt)
                if size > len(value):
                    at = struct.unpack(f"<{off_fmt}", value)[0]
                    end = max(end, at + size)
                if tag in (324, 325):
                    if typ not in _INTS:
                        raise LayoutError(f"{path}: tile array of TIFF type {typ}")
                    arrays[tag] = TileArray(typ, count, at)
                elif typ in _INTS and count <= 4 and size <= len(value):
                    fields[tag] = _values(value, _INTS[typ], count)
            nxt = struct.unpack(f"<{off_fmt}", raw[n * entry :])[0]
            if 322 not in fields or 324 not in arrays or 325 not in arrays:
                raise LayoutError(f"{path}: not a tiled TIFF")
            ifds.append(
                Ifd(
                    width=fields[256][0],
                    height=fields[257][0],
                    tile_width=fields[322][0],
                    tile_height=fields[323][0],
                    fields=tuple((t, fields.get(t, default or ())) for t, default in sorted(_SAME.items())),
                    offsets=arrays[324],
                    counts=arrays[325],
                )
            )
            off = nxt
    return TiffLayout(bigtiff=big, ifds=tuple(ifds), header_end=end)


def _read_array(f: Any, arr: TileArray) -> NDArray[np.int64]:
    f.seek(arr.at)
    dtype = np.dtype(_ARRAYS[arr.type])
    return np.frombuffer(f.read(arr.count * dtype.itemsize), dtype=dtype).astype(np.int64)


def read_tiles(path: str | os.PathLike[str], ifd: Ifd) -> TileRun:
    """Return where the tiles of one of ``path``'s IFDs are (all of them, row by row)."""
    with open(path, "rb") as f:
        offsets, counts = _read_array(f, ifd.offsets), _read_array(f, ifd.counts)
    if offsets.size != ifd.tiles or counts.size != ifd.tiles:
        raise LayoutError(f"{path}: {offsets.size} tiles where {ifd.tiles} were expected")
    if ((counts > 0) & (counts < 4)).any():
        raise LayoutError(f"{path}: a tile shorter than 4 bytes (the COG repeats a tile's last 4)")
    return TileRun(Path(path), ifd, offsets, counts)


def compatible(source: Ifd, target: Ifd) -> bool:
    """Whether ``source``'s tiles decode as ``target``'s: same tiling, compression and pixel type."""
    return source.fields == target.fields and source.tiles_across == target.tiles_across


def fits_at(source: Ifd, target: Ifd, row_off: int) -> bool:
    """Whether ``source``'s tiles can stand for ``target``'s block rows from row ``row_off`` on.

    They can when they decode alike (:func:`compatible`), the images are as wide, and
    ``source`` starts on a block row of ``target`` and ends on one (or at its end).
    """
    end = row_off + source.height
    return (
        row_off % target.tile_height == 0
        and source.width == target.width
        and (end % target.tile_height == 0 or end == target.height)
        and end <= target.height
        and compatible(source, target)
    )


def splice(staged: TileRun, taken: Mapping[int, TileRun]) -> list[TileRun]:
    """Return an image's tiles as runs: ``staged``'s, but the block rows in ``taken`` from there.

    ``taken`` maps a first block row to the run (whole block rows) that stands for it.
    """
    across = staged.ifd.tiles_across
    block_rows = staged.counts.size // across
    runs: list[TileRun] = []
    br = 0
    while br < block_rows:
        run = taken.get(br)
        if run is not None:
            runs.append(run)
            br += run.counts.size // across
            continue
        end = br + 1
        while end < block_rows and end not in taken:
            end += 1
        runs.append(staged.part(br * across, end * across))
        br = end
    return runs


def assemble_cog(
    skeleton: str | os.PathLike[str],
    images: Sequence[Sequence[TileRun]],
    out: str | os.PathLike[str],
    *,
    blank: bytes | None = None,
) -> None:
    """Write ``out``: the skeleton's header and IFDs, then every image's tiles, smallest image first.

    Parameters
    ----------
    skeleton : str or os.PathLike
        A COG written by GDAL with no tile at all (``SPARSE_OK=TRUE`` from an empty source).
    images : sequence of sequence of TileRun
        For each IFD of the skeleton, in its order (full resolution first), the runs whose
        tiles, one after the other, are that image's tiles row by row.
    out : str or os.PathLike
        The COG to write (a temporary name; the caller commits it).
    blank : bytes, optional
        A compressed tile of nodata, written for each tile a run leaves out.

    Raises
    ------
    LayoutError
        If the skeleton has tiles, the runs do not add up to each image's tiles, or an
        offset does not fit the skeleton's tile arrays (a classic TIFF past 4 GiB).
    """
    layout = read_layout(skeleton)
    if len(images) != len(layout.ifds):
        raise LayoutError(f"{skeleton}: {len(layout.ifds)} images, but tiles for {len(images)}")
    if os.path.getsize(skeleton) != layout.header_end:
        raise LayoutError(f"{skeleton}: the skeleton holds tile data")
    for ifd, runs in zip(layout.ifds, images, strict=True):
        if sum(r.counts.size for r in runs) != ifd.tiles:
            raise LayoutError(f"{skeleton}: tiles for a {ifd.width} x {ifd.height} image do not add up")
        for run in runs:
            if not compatible(run.ifd, ifd):
                raise LayoutError(f"{run.path}: its tiles do not decode like those of {skeleton}")
            if not run.counts.all() and (blank is None or len(blank) < 4):
                raise LayoutError(f"{run.path}: tiles are missing and no blank tile was given")
    order = sorted(range(len(layout.ifds)), key=lambda i: layout.ifds[i].width * layout.ifds[i].height)
    with open(skeleton, "rb") as f:
        head = f.read(layout.header_end)
    placed: dict[int, tuple[NDArray[np.int64], NDArray[np.int64]]] = {}
    with open(out, "wb") as dst:
        dst.write(head)
        pos = len(head)
        for i in order:
            offsets, counts = [], []
            for run in images[i]:
                with open(run.path, "rb") as src:
                    for o, c in zip(run.offsets.tolist(), run.counts.tolist(), strict=True):
                        if c:
                            src.seek(o)
                            data = src.read(c)
                            if len(data) != c:
                                raise LayoutError(f"{run.path}: a tile ends past the end of the file")
                        else:
                            assert blank is not None
                            data = blank
                            c = len(data)
                        dst.write(struct.pack("<I", c) + data + data[-4:])
                        offsets.append(pos + 4)
                        counts.append(c)
                        pos += c + 8
            placed[i] = (np.array(offsets, dtype=np.int64), np.array(counts, dtype=np.int64))
        for i, (offsets_arr, counts_arr) in placed.items():
            ifd = layout.ifds[i]
            for arr, values in ((ifd.offsets, offsets_arr), (ifd.counts, counts_arr)):
                dtype = np.dtype(_ARRAYS[arr.type])
                if values.size and int(values.max()) >= 1 << (8 * dtype.itemsize):
                    raise LayoutError(f"{out}: offsets past {1 << (8 * dtype.itemsize)} bytes need a BigTIFF")
                dst.seek(arr.at)
                dst.write(values.astype(dtype).tobytes())
