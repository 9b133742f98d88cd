"""The tile grid: which windows of a scene are run through the model, in what order.

Tiles are ``tile_size`` square and step by ``tile_size - overlap`` along each axis; the last row
and column are snapped inward so they end exactly at the scene edge (their overlap with the
previous tile is then larger than ``overlap``). An axis shorter than one tile gets a single tile
that covers all of it; the reader pads it by reflection to the model input size
(:attr:`TileGrid.input_shape`: the tile size, or the axis rounded up to a multiple of 32 when
shorter, so a thin scene does not run the model on a mostly reflected tile) and the mosaic crops
it back.

Tiles are visited band by band, top to bottom; a band is one grid row, visited left to right,
except that the snapped last grid row joins the row before it (it overlaps that row by more
than ``overlap``): that band is visited column by column, both tiles of a column in turn. So
the rows one band shares with the next are only ever ``overlap`` high, which is what the
streaming mosaic keeps in memory across bands.

The grid is global: a run over a strip of rows (``row_range``) uses the same windows, in the
same order, as a run over the whole scene, so strips stitched together equal the whole-scene
result bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from geopsp.errors import TilingError

__all__ = ["INPUT_MULTIPLE", "Tile", "TileGrid", "axis_offsets"]

INPUT_MULTIPLE = 32
"""An axis shorter than a tile is padded to a multiple of this (the deepest encoder stride)."""


def axis_offsets(length: int, tile_size: int, overlap: int) -> tuple[int, ...]:
    """Start offsets of the tiles along one axis.

    Parameters
    ----------
    length : int
        Scene size along the axis (pixels, >= 1).
    tile_size : int
        Tile edge in pixels.
    overlap : int
        Overlap between neighbouring tiles (``0 <= 2 * overlap < tile_size``).

    Returns
    -------
    tuple of int
        Strictly increasing offsets; the first is 0 and the last tile ends at ``length``
        (or starts at 0 when ``length <= tile_size``).

    Examples
    --------
    >>> axis_offsets(1000, 512, 64)
    (0, 448, 488)
    >>> axis_offsets(300, 512, 64)
    (0,)
    """
    if length < 1:
        raise TilingError(f"scene axis of {length} pixels cannot be tiled; the scene is empty")
    if length <= tile_size:
        return (0,)
    stride = tile_size - overlap
    offsets = list(range(0, length - tile_size, stride))
    offsets.append(length - tile_size)
    return tuple(offsets)


@dataclass(frozen=True, slots=True)
class Tile:
    """One window of the grid.

    Parameters
    ----------
    index : int
        ``grid_row * columns + grid_col`` (unique; the visiting order is :meth:`TileGrid.tiles`).
    grid_row, grid_col : int
        Row and column of the tile in the grid.
    row, col : int
        Top-left pixel of the window in the scene.
    height, width : int
        Size of the window inside the scene (``<= size``; smaller only when the scene is).
    size : int
        Edge of the square the model sees (the window padded by reflection when smaller).
    """

    index: int
    grid_row: int
    grid_col: int
    row: int
    col: int
    height: int
    width: int
    size: int

    @property
    def padded(self) -> bool:
        """Whether the window is smaller than the model input and needs padding."""
        return self.height < self.size or self.width < self.size

    @property
    def row_end(self) -> int:
        """One past the last scene row of the window."""
        return self.row + self.height

    @property
    def col_end(self) -> int:
        """One past the last scene column of the window."""
        return self.col + self.width


@dataclass(frozen=True)
class TileGrid:
    """The window grid of a ``height`` x ``width`` scene.

    Parameters
    ----------
    height, width : int
        Scene size in pixels.
    tile_size : int
        Model input edge.
    overlap : int
        Overlap between neighbouring tiles; ``2 * overlap < tile_size``.

    Raises
    ------
    TilingError
        If the tile size or overlap cannot work.

    Examples
    --------
    >>> g = TileGrid(1000, 700, 512, 64)
    >>> g.row_offsets, g.col_offsets, len(g)
    ((0, 448, 488), (0, 188), 6)
    >>> g.bands
    ((0,), (1, 2))
    >>> [(t.grid_row, t.grid_col) for t in g.tiles()]
    [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (2, 1)]
    """

    height: int
    width: int
    tile_size: int
    overlap: int
    row_offsets: tuple[int, ...] = field(init=False)
    col_offsets: tuple[int, ...] = field(init=False)
    bands: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise TilingError(f"tile size must be >= 1, got {self.tile_size}")
        if self.overlap < 0:
            raise TilingError(f"overlap must be >= 0, got {self.overlap}")
        if 2 * self.overlap >= self.tile_size:
            raise TilingError(
                f"overlap ({self.overlap}) must be less than half the tile size ({self.tile_size}); "
                f"use at most {(self.tile_size - 1) // 2}"
            )
        object.__setattr__(self, "row_offsets", axis_offsets(self.height, self.tile_size, self.overlap))
        object.__setattr__(self, "col_offsets", axis_offsets(self.width, self.tile_size, self.overlap))
        rows = list(range(len(self.row_offsets)))
        bands: list[tuple[int, ...]] = [(i,) for i in rows]
        offs = self.row_offsets
        if len(offs) >= 2 and offs[-1] - offs[-2] < self.tile_size - self.overlap:
            bands[-2:] = [(rows[-2], rows[-1])]  # the snapped last row joins the one before
        object.__setattr__(self, "bands", tuple(bands))

    def __len__(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` every tile is padded to for the model.

        The tile size, or for an axis shorter than a tile that axis rounded up to a multiple of
        32 (never more than the tile size).

        Examples
        --------
        >>> TileGrid(1, 100000, 4096, 32).input_shape
        (32, 4096)
        """

        def fit(n: int) -> int:
            return min(self.tile_size, -(-n // INPUT_MULTIPLE) * INPUT_MULTIPLE)

        return fit(self.height), fit(self.width)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return len(self.row_offsets), len(self.col_offsets)

    def tile(self, grid_row: int, grid_col: int) -> Tile:
        """Return the tile at a grid position."""
        r = self.row_offsets[grid_row]
        c = self.col_offsets[grid_col]
        return Tile(
            index=grid_row * len(self.col_offsets) + grid_col,
            grid_row=grid_row,
            grid_col=grid_col,
            row=r,
            col=c,
            height=min(self.tile_size, self.height - r),
            width=min(self.tile_size, self.width - c),
            size=self.tile_size,
        )

    def grid_rows(self, row_range: tuple[int, int] | None = None) -> range:
        """Grid rows whose windows overlap scene rows ``[r0, r1)`` (all rows by default)."""
        r0, r1 = self.check_row_range(row_range)
        first = None
        last = -1
        for i, off in enumerate(self.row_offsets):
            end = min(off + self.tile_size, self.height)
            if off < r1 and end > r0:
                if first is None:
                    first = i
                last = i
        if first is None:
            return range(0)
        return range(first, last + 1)

    def row_tiles(self, grid_row: int) -> list[Tile]:
        """All tiles of one grid row, left to right."""
        return [self.tile(grid_row, j) for j in range(len(self.col_offsets))]

    def band_of(self, grid_row: int) -> int:
        """Index of the band holding a grid row."""
        for b, rows in enumerate(self.bands):
            if grid_row in rows:
                return b
        raise IndexError(f"grid row {grid_row} is outside the grid")

    def band_span(self, band: int) -> tuple[int, int]:
        """``(top, next_top)``: the band's first scene row and the next band's (or the height).

        Scene rows ``[top, next_top)`` are complete once the band's tiles are blended; no tile of
        a later band reaches them.
        """
        top = self.row_offsets[self.bands[band][0]]
        nxt = self.row_offsets[self.bands[band + 1][0]] if band + 1 < len(self.bands) else self.height
        return top, nxt

    def band_rows(self, row_range: tuple[int, int] | None = None) -> list[tuple[int, tuple[int, ...]]]:
        """``(band, grid rows)`` of each band with grid rows overlapping ``[r0, r1)`` (only those rows)."""
        rows = set(self.grid_rows(row_range))
        out = []
        for b, band in enumerate(self.bands):
            sel = tuple(r for r in band if r in rows)
            if sel:
                out.append((b, sel))
        return out

    def band_tiles(self, grid_rows: tuple[int, ...]) -> list[Tile]:
        """Tiles of a band's grid rows in visiting order: column by column, top row first."""
        return [self.tile(r, j) for j in range(len(self.col_offsets)) for r in grid_rows]

    def tiles(self, row_range: tuple[int, int] | None = None) -> Iterator[Tile]:
        """Tiles overlapping scene rows ``[r0, r1)``, in visiting order (band by band)."""
        for _, rows in self.band_rows(row_range):
            yield from self.band_tiles(rows)

    def count(self, row_range: tuple[int, int] | None = None) -> int:
        """Count the tiles :meth:`tiles` yields."""
        return len(self.grid_rows(row_range)) * len(self.col_offsets)

    def check_row_range(self, row_range: tuple[int, int] | None) -> tuple[int, int]:
        """Validate a row range, returning ``(r0, r1)`` (the whole scene for ``None``).

        Raises
        ------
        TilingError
            If the range is empty or outside the scene.
        """
        if row_range is None:
            return 0, self.height
        r0, r1 = (int(v) for v in row_range)
        if not 0 <= r0 < r1 <= self.height:
            raise TilingError(f"row range ({r0}, {r1}) must satisfy 0 <= start < stop <= scene height {self.height}")
        return r0, r1
