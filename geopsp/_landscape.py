"""The seeded landscape behind :mod:`geopsp.synthetic`: noise, geometry, spectra, rendering.

Every pixel is a pure function of ``(seed, row, col)``. Values come from integer hashes of
lattice coordinates (splitmix64 on numpy uint64), interpolated into value noise or used to
jitter grids, never from a random stream. Only element-wise arithmetic that IEEE 754 rounds
exactly (``+ - * /``, ``sqrt``, ``floor``) touches per-pixel values; floating-point sums, BLAS
and transcendental functions could make a pixel depend on the shape of the array it was
computed in, or on the SIMD path taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["LABEL_NODATA", "U64", "Footprint", "Renderer", "hash_coords", "layer_key", "unit", "value_noise"]

LABEL_NODATA: Final = 255
"""Label value outside the scene's valid footprint."""

# --- spectra ---------------------------------------------------------------------------------
# Materials: what a pixel is made of. Several map to one label (field margins are cropland).
_CROP, _FOREST, _WATER, _ROAD, _BUILDING, _GRASS, _MARGIN = range(7)

# Surface reflectance per material in the bands of geopsp.synthetic.BAND_NAMES, as (low, high)
# end members; a per-pixel mixing value g in [0, 1] picks a spectrum between them (bare soil ->
# green crop, shadowed -> sunlit canopy, clear -> turbid water, asphalt -> gravel, grey -> red
# roof, dry -> lush grass, field margin).
#        red    green  blue   nir    re1    re2    re3    nir08  swir16 swir22
_SPECTRA: Final = np.array(
    [
        [[0.170, 0.130, 0.100, 0.240, 0.190, 0.210, 0.220, 0.250, 0.330, 0.280],
         [0.040, 0.090, 0.040, 0.440, 0.130, 0.320, 0.400, 0.450, 0.220, 0.110]],
        [[0.015, 0.030, 0.015, 0.170, 0.050, 0.130, 0.150, 0.175, 0.090, 0.040],
         [0.040, 0.070, 0.032, 0.350, 0.100, 0.250, 0.310, 0.355, 0.170, 0.080]],
        [[0.020, 0.045, 0.060, 0.010, 0.015, 0.012, 0.010, 0.010, 0.004, 0.003],
         [0.070, 0.090, 0.085, 0.035, 0.055, 0.040, 0.035, 0.032, 0.012, 0.007]],
        [[0.090, 0.085, 0.080, 0.120, 0.100, 0.110, 0.115, 0.120, 0.140, 0.130],
         [0.210, 0.195, 0.175, 0.260, 0.220, 0.230, 0.240, 0.260, 0.310, 0.280]],
        [[0.150, 0.150, 0.155, 0.190, 0.165, 0.175, 0.185, 0.195, 0.230, 0.210],
         [0.310, 0.160, 0.110, 0.330, 0.320, 0.330, 0.330, 0.340, 0.400, 0.330]],
        [[0.095, 0.100, 0.060, 0.270, 0.140, 0.220, 0.255, 0.280, 0.300, 0.200],
         [0.050, 0.105, 0.045, 0.390, 0.150, 0.300, 0.350, 0.400, 0.240, 0.130]],
        [[0.110, 0.105, 0.075, 0.220, 0.140, 0.190, 0.210, 0.225, 0.290, 0.220],
         [0.060, 0.090, 0.050, 0.300, 0.120, 0.240, 0.280, 0.305, 0.230, 0.140]],
    ],
    dtype=np.float64,
).transpose(1, 0, 2)  # fmt: skip
_MATERIAL_LABEL: Final = np.array([0, 1, 2, 3, 4, 5, 0], dtype=np.uint8)

# Scale from reflectance to stored values, and the valid range, per dtype.
_SCALE: Final = {"uint8": (510.0, 1.0, 255.0), "uint16": (10000.0, 1.0, 10000.0), "int16": (10000.0, 1.0, 10000.0)}
_NOISE_SIGMA: Final = 0.006  # additive sensor noise, reflectance units

# --- landscape parameters (pixels) -------------------------------------------------------------
_STRIP_PX = 46.0  # mean height of a strip of field parcels
_ROAD_GRID_PX = 300.0  # spacing of the road network's jittered lattice
_ROAD_KEEP = 0.6  # share of lattice edges that carry a road
_BUILDING_CELL = 12  # one building at most per cell of this size
_BUILDING_REACH = 28.0  # buildings stand at most this far from a road edge
_WATER_LEVEL = 0.70  # water where the water field exceeds this
_FOREST_LEVEL = 0.60  # forest where the forest field exceeds this
_SHORE = 0.015  # band of grassland along lake shores, in water-field units
_WATER_SCALES = (210.0, 80.0)
_WATER_WEIGHTS = (0.72, 0.28)

# Crop-row directions relative to the parcel grid, k * 11.25 degrees; computed once here so no
# transcendental function runs on arrays whose size depends on the window.
_STRIPE_COS: Final = np.array([math.cos(k * math.pi / 16) for k in range(16)], dtype=np.float32)
_STRIPE_SIN: Final = np.array([math.sin(k * math.pi / 16) for k in range(16)], dtype=np.float32)

# Layer keys: every independent random field hashes with its own key.
(
    _K_WARP_U, _K_WARP_V, _K_STRIP, _K_BRICK, _K_PARCEL, _K_FOREST1, _K_FOREST2, _K_FOREST3,
    _K_WATER1, _K_WATER2, _K_LIGHT, _K_GRASS, _K_CROWN1, _K_CROWN2, _K_TURBID, _K_ROADV, _K_ROADE,
    _K_SETTLE, _K_BUILDING, _K_NOISE, _K_ANGLE, _K_FOOTPRINT, _K_BANDGAIN,
) = range(1, 24)  # fmt: skip
_TEXTURES = ((_K_CROWN1, 2.0), (_K_CROWN2, 8.0), (_K_GRASS, 8.0))  # (key, scale) of periodic textures

U64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15
# Fine textures and sensor noise repeat every _TEX_PX pixels: they are looked up in tiles made
# once per scene rather than hashed per pixel (far cheaper; a 5 km repeat goes unnoticed).
_TEX_PX = 512
_G_LEVELS = 256  # the spectral mixing value g is quantized to this many levels

UInt64Array = NDArray[np.uint64]
F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


# --- hashing and noise ---------------------------------------------------------------------------
def _mix_int(x: int) -> int:
    """Return the splitmix64 finalizer of ``x`` (Python ints, for per-scene constants)."""
    x &= U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & U64
    return x ^ (x >> 31)


def layer_key(seed: int, layer: int) -> int:
    """Return the hash key of one independent random field (``layer``) of a landscape."""
    return _mix_int(_mix_int(seed * _GOLDEN + layer) + layer * 0x632BE59BD9B4E019)


def _mix(x: UInt64Array) -> UInt64Array:
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hash_coords(key: int, *coords: NDArray[Any] | np.integer[Any]) -> UInt64Array:
    """Hash integer coordinate arrays (broadcast together) into uniform 64-bit values."""
    shape = np.broadcast_shapes(*(np.shape(c) for c in coords))
    h = np.full(shape, key, dtype=np.uint64)
    for i, c in enumerate(coords):
        c64 = np.ascontiguousarray(c, dtype=np.int64).view(np.uint64)
        h = _mix(h ^ (c64 * np.uint64((_GOLDEN * (2 * i + 1)) & U64)))
    return h


def unit(h: UInt64Array, slot: int = 0) -> F64:
    """Return uniform floats in [0, 1) from 21 bits of ``h`` (``slot`` 0..2 picks which bits)."""
    return ((h >> np.uint64(43 - 21 * slot)) & np.uint64(0x1FFFFF)).astype(np.float64) * (1.0 / 2097152.0)


def _smooth(t: F64) -> F32:
    t32 = t.astype(np.float32)
    return t32 * t32 * (np.float32(3.0) - np.float32(2.0) * t32)


def value_noise(key: int, rows: I64, cols: I64, scale: float, wrap: int = 0) -> F32:
    """Smooth value noise in [0, 1] on the grid ``rows x cols`` (global pixel indices).

    Lattice values at multiples of ``scale`` are hashed and interpolated separably, first
    along columns for the few lattice rows needed, then along rows; each output pixel sees
    the same arithmetic whatever window it is computed in. ``wrap`` > 0 repeats the lattice
    every ``wrap`` cells.
    """
    fy = (rows + 0.5) / scale
    fx = (cols + 0.5) / scale
    iy = np.floor(fy).astype(np.int64)
    ix = np.floor(fx).astype(np.int64)
    ty = _smooth(fy - iy)[:, None]
    tx = _smooth(fx - ix)[None, :]
    i0, j0 = int(iy[0]), int(ix[0])
    li, lj = np.arange(i0, int(iy[-1]) + 2)[:, None], np.arange(j0, int(ix[-1]) + 2)[None, :]
    lat = unit(hash_coords(key, li % wrap, lj % wrap) if wrap else hash_coords(key, li, lj))
    lat32 = lat.astype(np.float32)
    jx = ix - j0
    along = lat32[:, jx] + (lat32[:, jx + 1] - lat32[:, jx]) * tx
    step = along[1:] - along[:-1]
    ky = iy - i0
    out: F32 = step[ky]
    out *= ty
    out += along[ky]
    return out


def _value_noise_at(key: int, y: F64, x: F64, scale: float) -> F32:
    """Value noise at arbitrary points, with the same arithmetic as :func:`_value_noise`."""
    fy = (y + 0.5) / scale
    fx = (x + 0.5) / scale
    iy = np.floor(fy).astype(np.int64)
    ix = np.floor(fx).astype(np.int64)
    ty = _smooth(fy - iy)
    tx = _smooth(fx - ix)

    def corner(di: int, dj: int) -> F32:
        return unit(hash_coords(key, iy + di, ix + dj)).astype(np.float32)

    a0 = corner(0, 0) + (corner(0, 1) - corner(0, 0)) * tx
    a1 = corner(1, 0) + (corner(1, 1) - corner(1, 0)) * tx
    out: F32 = a0 + (a1 - a0) * ty
    return out


def _fractal(keys: tuple[int, ...], rows: I64, cols: I64, scales: tuple[float, ...], weights: tuple[float, ...]) -> F32:
    out = value_noise(keys[0], rows, cols, scales[0]) * np.float32(weights[0])
    for key, scale, weight in zip(keys[1:], scales[1:], weights[1:], strict=True):
        out += value_noise(key, rows, cols, scale) * np.float32(weight)
    return out


# --- scene geometry ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Footprint:
    """A rotated rectangle centred on the scene: the valid area when a nodata collar is asked for."""

    cy: float
    cx: float
    cos: float
    sin: float
    half_w: float
    half_h: float

    @classmethod
    def for_scene(cls, seed: int, width: int, height: int) -> Footprint:
        h = _mix_int(layer_key(seed, _K_FOOTPRINT))
        angle = math.radians(10.0 + 5.0 * ((h >> 11) / 2.0**53))
        if h & 1:
            angle = -angle
        # Elongated scenes get a smaller angle so the footprint keeps a useful size.
        limit = 0.5 * math.atan(min(width, height) / max(width, height))
        angle = math.copysign(min(abs(angle), limit), angle)
        c, s = math.cos(angle), abs(math.sin(angle))
        k = 0.96 * min(width / (width * c + height * s), height / (width * s + height * c))
        return cls(height / 2.0, width / 2.0, c, math.sin(angle), k * width / 2.0, k * height / 2.0)

    def inside(self, rows: I64, cols: I64) -> NDArray[np.bool_]:
        y = (rows + 0.5 - self.cy)[:, None]
        x = (cols + 0.5 - self.cx)[None, :]
        along = np.abs(x * self.cos + y * self.sin)
        across = np.abs(y * self.cos - x * self.sin)
        return (along <= self.half_w) & (across <= self.half_h)


@dataclass(frozen=True, slots=True)
class _Segment:
    """One straight piece of a road, in pixel coordinates (row, col of pixel centres)."""

    y0: float
    x0: float
    y1: float
    x1: float
    half_width: float
    gravel: float

    def bounds(self, margin: float) -> tuple[float, float, float, float]:
        return (
            min(self.y0, self.y1) - margin,
            min(self.x0, self.x1) - margin,
            max(self.y0, self.y1) + margin,
            max(self.x0, self.x1) + margin,
        )

    def distance(self, y: NDArray[np.floating[Any]], x: NDArray[np.floating[Any]]) -> F64:
        return _segment_distance(y, x, self.y0, self.x0, self.y1, self.x1)


def _segment_distance(y: Any, x: Any, y0: Any, x0: Any, y1: Any, x1: Any) -> F64:
    """Distance from points ``(y, x)`` to segments ``(y0, x0)-(y1, x1)``, all broadcast together."""
    dy, dx = y1 - y0, x1 - x0
    py, px = y - y0, x - x0
    t = np.clip((py * dy + px * dx) / np.maximum(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
    ey, ex = py - t * dy, px - t * dx
    out: F64 = np.sqrt(ey * ey + ex * ex)
    return out


def _road_segments(seed: int, r0: float, c0: float, r1: float, c1: float, margin: float) -> list[_Segment]:
    """Road pieces whose bounds, grown by ``margin``, meet the box ``[r0, r1) x [c0, c1)``.

    Roads join the vertices of a jittered lattice; each lattice edge carries a gently curved
    road (a quadratic Bezier drawn as four straight pieces) with some probability.
    """
    g = _ROAD_GRID_PX
    i_lo, i_hi = math.floor((r0 - margin) / g) - 2, math.floor((r1 + margin) / g) + 1
    j_lo, j_hi = math.floor((c0 - margin) / g) - 2, math.floor((c1 + margin) / g) + 1
    ii = np.arange(i_lo, i_hi + 2)[:, None]
    jj = np.arange(j_lo, j_hi + 2)[None, :]
    hv = hash_coords(layer_key(seed, _K_ROADV), ii, jj)
    vy = (ii + 0.5 + 0.7 * (unit(hv, 0) - 0.5)) * g
    vx = (jj + 0.5 + 0.7 * (unit(hv, 1) - 0.5)) * g
    ekey = layer_key(seed, _K_ROADE)
    n_i, n_j = vy.shape
    parts = []
    for direction, (di, dj) in enumerate(((0, 1), (1, 0))):
        # Edges from vertex (i, j) to (i + di, j + dj).
        start = (slice(0, n_i - di), slice(0, n_j - dj))
        end = (slice(di, n_i), slice(dj, n_j))
        he = hash_coords(ekey, ii, jj, np.int64(direction))[start]
        keep = unit(he, 0) < _ROAD_KEEP
        bend, kind = unit(he, 1)[keep] - 0.5, unit(he, 2)[keep]
        parts.append((vy[start][keep], vx[start][keep], vy[end][keep], vx[end][keep], bend, kind))
    ya, xa, yb, xb, bend, kind = (np.concatenate(p) for p in zip(*parts, strict=True))
    # Control point: the midpoint pushed sideways, so roads bend a little.
    yc = (ya + yb) / 2 + 0.35 * bend * (xb - xa)
    xc = (xa + xb) / 2 - 0.35 * bend * (yb - ya)
    t = np.linspace(0.0, 1.0, 5)[None, :]
    s = 1.0 - t
    py = s * s * ya[:, None] + 2 * s * t * yc[:, None] + t * t * yb[:, None]
    px = s * s * xa[:, None] + 2 * s * t * xc[:, None] + t * t * xb[:, None]
    half_width = np.broadcast_to((1.0 + 0.5 * np.floor(3.0 * kind))[:, None], (len(kind), 4))  # 2, 3 or 4 px wide
    gravel = np.broadcast_to(np.where(kind < 0.3, 0.85, 0.15)[:, None], (len(kind), 4))
    y0, x0, y1, x1 = py[:, :-1], px[:, :-1], py[:, 1:], px[:, 1:]
    grow = margin + half_width + 1.0
    hit = (
        (np.maximum(y0, y1) + grow >= r0) & (np.minimum(y0, y1) - grow <= r1)
        & (np.maximum(x0, x1) + grow >= c0) & (np.minimum(x0, x1) - grow <= c1)
    )  # fmt: skip
    return [
        _Segment(*(float(v) for v in vals))
        for vals in zip(y0[hit], x0[hit], y1[hit], x1[hit], half_width[hit], gravel[hit], strict=True)
    ]


# --- rendering -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Renderer:
    """Renders any window of the landscape for one seed and band set."""

    seed: int
    bands: int
    dtype: str
    nodata: float | None
    footprint: Footprint | None
    spectra: F32  # (bands, materials * _G_LEVELS): reflectance by material and quantized g
    textures: F32  # (4, _TEX_PX, 2 * _TEX_PX): fine crowns, crowns, grass, sensor noise
    field_cos: float
    field_sin: float

    @classmethod
    def create(cls, seed: int, bands: int, dtype: str, nodata: float | None, footprint: Footprint | None) -> Renderer:
        ends = _band_spectra(seed, bands)  # (2, materials, bands)
        g = (np.arange(_G_LEVELS) + 0.5) / _G_LEVELS
        table = ends[0][:, None, :] + (ends[1] - ends[0])[:, None, :] * g[None, :, None]
        spectra = np.ascontiguousarray(table.reshape(-1, bands).T, dtype=np.float32)
        idx = np.arange(_TEX_PX, dtype=np.int64)
        wrap = [value_noise(layer_key(seed, k), idx, idx, sc, int(_TEX_PX / sc)) for k, sc in _TEXTURES]
        h = hash_coords(layer_key(seed, _K_NOISE), idx[:, None], idx[None, :])
        # Sum of three uniforms: near-Gaussian, unit variance.
        wrap.append(((unit(h, 0) + unit(h, 1) + unit(h, 2) - 1.5) * (2.0 * _NOISE_SIGMA)).astype(np.float32))
        textures = np.concatenate([np.stack(wrap)] * 2, axis=2)  # doubled across, so windows slice
        angle = math.pi / 2 * ((_mix_int(layer_key(seed, _K_ANGLE)) >> 11) / 2.0**53)
        return cls(seed, bands, dtype, nodata, footprint, spectra, textures, math.cos(angle), math.sin(angle))

    def key(self, layer: int) -> int:
        return layer_key(self.seed, layer)

    def texture(self, which: int, rows: I64, cols: I64) -> F32:
        """Return texture ``which`` (periodic) on the grid ``rows x cols``."""
        tile = self.textures[which]
        c0 = int(cols[0]) % _TEX_PX
        if len(cols) <= _TEX_PX:
            out: F32 = tile[:, c0 : c0 + len(cols)][rows % _TEX_PX]
        else:
            out = tile[rows % _TEX_PX][:, cols % _TEX_PX]
        return out

    def render(self, row0: int, col0: int, height: int, width: int) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        """Return ``(bands, height, width)`` pixel values and ``(height, width)`` labels."""
        rows = np.arange(row0, row0 + height, dtype=np.int64)
        cols = np.arange(col0, col0 + width, dtype=np.int64)
        mat, label, g, light = self._layout(rows, cols)
        out = self._spectral(rows, cols, mat, g, light)
        if self.footprint is not None and self.nodata is not None:
            outside = ~self.footprint.inside(rows, cols)
            label[outside] = LABEL_NODATA
            out[:, outside] = self.nodata
        return out, label

    # Land cover ---------------------------------------------------------------------------------
    def _layout(self, rows: I64, cols: I64) -> tuple[NDArray[np.uint8], NDArray[np.uint8], F32, F32]:
        """Material and label of each pixel, its spectral mixing value g in [0, 1] and illumination."""
        f32 = np.float32
        yc = (rows + 0.5).astype(np.float32)[:, None]
        xc = (cols + 0.5).astype(np.float32)[None, :]
        # Field parcels: strips of bricks in a rotated, slightly warped grid.
        u = xc * f32(self.field_cos) + yc * f32(self.field_sin)
        v = yc * f32(self.field_cos) - xc * f32(self.field_sin)
        u += (value_noise(self.key(_K_WARP_U), rows, cols, 40.0) - f32(0.5)) * f32(9.0)
        v += (value_noise(self.key(_K_WARP_V), rows, cols, 40.0) - f32(0.5)) * f32(9.0)
        parcel, edge_px, attrs = self._parcels(u, v)
        ptype, greenness, row_u, row_v, depth, bright = (a.take(parcel, mode="clip") for a in attrs)
        phase = u * row_u + v * row_v
        phase -= np.floor(phase)
        tri = np.abs(phase * f32(2.0) - f32(1.0))  # triangle wave across the crop rows
        g = greenness * (f32(1.0) - depth * tri)
        light = bright * (f32(0.94) + f32(0.12) * value_noise(self.key(_K_LIGHT), rows, cols, 320.0))

        mat = ptype.copy()
        mat[(edge_px < f32(1.0)) & (ptype != _FOREST)] = _MARGIN
        label = _MATERIAL_LABEL.take(ptype)
        grass_tex = self.texture(2, rows, cols)
        np.copyto(g, f32(0.25) + f32(0.5) * grass_tex + f32(0.25) * greenness, where=ptype == _GRASS)

        # Forest: a low-frequency field with ragged edges and a crown texture.
        crown = self.texture(1, rows, cols)
        forest_field = _fractal(
            (self.key(_K_FOREST1), self.key(_K_FOREST2), self.key(_K_FOREST3)),
            rows, cols, (170.0, 70.0, 28.0), (0.6, 0.28, 0.12),
        )  # fmt: skip
        forest_field += (crown - f32(0.5)) * f32(0.05)
        forest = (forest_field > f32(_FOREST_LEVEL)) | (ptype == _FOREST)
        mat[forest] = _FOREST
        label[forest] = 1
        canopy = (self.texture(0, rows, cols) - f32(0.5)) * f32(1.6) + (crown - f32(0.5)) * f32(0.9) + f32(0.55)
        np.copyto(g, canopy, where=forest)

        # Water: smooth blobs, turbid near the shore, with a grassy shore line.
        water_field = _fractal((self.key(_K_WATER1), self.key(_K_WATER2)), rows, cols, _WATER_SCALES, _WATER_WEIGHTS)
        water = water_field > f32(_WATER_LEVEL)
        shore = ~water & (water_field > f32(_WATER_LEVEL - _SHORE))
        mat[shore] = _GRASS
        label[shore] = 5
        np.copyto(g, grass_tex, where=shore)
        mat[water] = _WATER
        label[water] = 2
        shallow = f32(1.0) - np.minimum((water_field - f32(_WATER_LEVEL)) * f32(12.0), f32(1.0))
        turbid = value_noise(self.key(_K_TURBID), rows, cols, 60.0)
        np.copyto(g, shallow * f32(0.7) + turbid * f32(0.3), where=water)
        light[water] = 1.0

        self._buildings(rows, cols, mat, label, g, light)
        self._roads(rows, cols, mat, label, g, light)
        np.clip(g, 0.0, 1.0, out=g)
        return mat, label, g, light

    def _parcels(self, u: F32, v: F32) -> tuple[NDArray[np.intp], F32, tuple[NDArray[Any], ...]]:
        """Index of each pixel's parcel into the returned attribute tables, and its distance to the parcel's edge."""
        f32 = np.float32
        s = _STRIP_PX
        kk = np.floor(v * f32(1.0 / s)).astype(np.intp)
        k_lo = int(kk.min()) - 1
        kr = np.arange(k_lo, int(kk.max()) + 3)
        kk -= k_lo
        # Strip boundaries jitter by up to 0.3 strip heights, so a pixel's strip is kk - 1, kk or kk + 1.
        bound = ((kr + 0.6 * (unit(hash_coords(self.key(_K_STRIP), kr)) - 0.5)) * s).astype(np.float32)
        kk -= v < bound.take(kk, mode="clip")
        kk += v >= bound.take(kk + 1, mode="clip")
        hb = hash_coords(self.key(_K_BRICK), kr)
        brick = ((0.7 + 1.6 * unit(hb, 0)) * s).astype(np.float32)
        width = brick.take(kk, mode="clip")
        along = u - (unit(hb, 1) * brick).astype(np.float32).take(kk, mode="clip")
        along /= width
        m_float = np.floor(along)
        m = m_float.astype(np.intp)
        m_lo = int(m.min())
        n_m = int(m.max()) - m_lo + 1
        along -= m_float
        edge_px = np.minimum(along, f32(1.0) - along)
        edge_px *= width
        np.minimum(edge_px, v - bound.take(kk, mode="clip"), out=edge_px)
        np.minimum(edge_px, bound.take(kk + 1, mode="clip") - v, out=edge_px)
        kk *= n_m
        kk += m
        kk -= m_lo

        hp = hash_coords(self.key(_K_PARCEL), kr[:, None], np.arange(m_lo, m_lo + n_m)[None, :]).ravel()
        h2 = _mix(hp ^ np.uint64(_GOLDEN))
        kind = unit(hp, 0)
        ptype = np.where(kind < 0.72, _CROP, np.where(kind < 0.9, _GRASS, _FOREST)).astype(np.uint8)
        # Crop rows mostly follow a parcel side; some fields are drilled diagonally.
        ori = unit(hp, 2)
        turn = np.where(ori < 0.4, 0, np.where(ori < 0.8, 8, np.floor(unit(h2, 0) * 16))).astype(np.intp)
        period = (3.0 + 5.0 * unit(h2, 1)).astype(np.float32)
        attrs = (
            ptype,
            unit(hp, 1).astype(np.float32),  # greenness: bare soil 0 .. full crop 1
            _STRIPE_COS[turn] / period,
            _STRIPE_SIN[turn] / period,
            (0.15 + 0.5 * unit(h2, 2)).astype(np.float32),  # depth of the crop-row texture
            (0.9 + 0.2 * unit(_mix(h2), 0)).astype(np.float32),  # brightness
        )
        return kk, edge_px, attrs

    def _roads(
        self, rows: I64, cols: I64, mat: NDArray[np.uint8], label: NDArray[np.uint8], g: F32, light: F32
    ) -> None:
        r0, r1, c0, c1 = float(rows[0]), float(rows[-1] + 1), float(cols[0]), float(cols[-1] + 1)
        for seg in _road_segments(self.seed, r0, c0, r1, c1, 0.0):
            br0, bc0, br1, bc1 = seg.bounds(seg.half_width + 1.0)
            a, b = max(0, math.floor(br0 - r0)), min(len(rows), math.ceil(br1 - r0) + 1)
            c, d = max(0, math.floor(bc0 - c0)), min(len(cols), math.ceil(bc1 - c0) + 1)
            if a >= b or c >= d:
                continue
            dist = seg.distance((rows[a:b] + 0.5)[:, None], (cols[c:d] + 0.5)[None, :])
            ms, gs = mat[a:b, c:d], g[a:b, c:d]
            on = (dist < seg.half_width) & (ms != _WATER)  # roads end at lakes
            # Where roads cross, the lighter surface wins whatever order they are drawn in.
            np.copyto(gs, np.float32(seg.gravel), where=on & ((ms != _ROAD) | (gs < seg.gravel)))
            ms[on] = _ROAD
            label[a:b, c:d][on] = 3
            light[a:b, c:d][on] = 1.0

    def _buildings(
        self, rows: I64, cols: I64, mat: NDArray[np.uint8], label: NDArray[np.uint8], g: F32, light: F32
    ) -> None:
        """Rectangles, at most one per cell, in cells near roads; denser in villages."""
        size = _BUILDING_CELL
        cr, cc = rows // size, cols // size
        cell_r = np.arange(int(cr[0]), int(cr[-1]) + 1)
        cell_c = np.arange(int(cc[0]), int(cc[-1]) + 1)
        cy = (cell_r * size + size / 2)[:, None] + np.zeros((1, len(cell_c)))
        cx = (cell_c * size + size / 2)[None, :] + np.zeros((len(cell_r), 1))
        segments = _road_segments(
            self.seed, float(cell_r[0] * size), float(cell_c[0] * size),
            float((cell_r[-1] + 1) * size), float((cell_c[-1] + 1) * size), _BUILDING_REACH + 8.0,
        )  # fmt: skip
        if not segments:
            return
        y0, x0, y1, x1, half_width = np.array([(g.y0, g.x0, g.y1, g.x1, g.half_width) for g in segments]).T
        clearance = (_segment_distance(cy[..., None], cx[..., None], y0, x0, y1, x1) - half_width).min(axis=-1)
        h = hash_coords(self.key(_K_BUILDING), cell_r[:, None], cell_c[None, :])
        chance = np.clip((_value_noise_at(self.key(_K_SETTLE), cy, cx, 450.0) - 0.45) * 3.0, 0.05, 0.85)
        water_at = sum(
            _value_noise_at(self.key(k), cy, cx, sc) * np.float32(wt)
            for k, sc, wt in zip((_K_WATER1, _K_WATER2), _WATER_SCALES, _WATER_WEIGHTS, strict=True)
        )
        exists = (
            (clearance >= 6.0) & (clearance <= _BUILDING_REACH) & (unit(h, 0) < chance)
            & (water_at < _WATER_LEVEL - _SHORE)
        )  # fmt: skip
        if not exists.any():
            return
        h2 = _mix(h ^ np.uint64(_GOLDEN))
        bh = 3 + np.floor(unit(h, 1) * 6).astype(np.intp)  # 3..8 px
        bw = 3 + np.floor(unit(h, 2) * 6).astype(np.intp)
        oy = 1 + np.floor(unit(h2, 0) * (size - 1 - bh)).astype(np.intp)
        ox = 1 + np.floor(unit(h2, 1) * (size - 1 - bw)).astype(np.intp)
        roof = unit(h2, 2).astype(np.float32)
        # Separable test: the row lies within the rectangle's rows of its cell, the column within its columns.
        li, lj = cr - cell_r[0], cc - cell_c[0]
        ry = (rows - cr * size)[:, None]
        in_rows = exists[li] & (ry >= oy[li]) & (ry < oy[li] + bh[li])  # (h, cells across)
        rx = (cols - cc * size)[None, :]
        in_cols = (rx >= ox[:, lj]) & (rx < ox[:, lj] + bw[:, lj])  # (cells down, w)
        on = in_rows[:, lj] & in_cols[li]
        if not on.any():
            return
        roof_px = roof[li][:, lj][on]
        mat[on] = _BUILDING
        label[on] = 4
        g[on] = roof_px
        light[on] = np.float32(0.85) + np.float32(0.3) * roof_px

    # Spectra -------------------------------------------------------------------------------------
    def _spectral(self, rows: I64, cols: I64, mat: NDArray[np.uint8], g: F32, light: F32) -> NDArray[Any]:
        out = np.empty((self.bands, len(rows), len(cols)), dtype=self.dtype)
        q = (g * np.float32(_G_LEVELS - 0.001)).astype(np.intp)
        q += mat.astype(np.intp) * _G_LEVELS
        for b in range(self.bands):
            refl = self.spectra[b].take(q, mode="clip")
            refl *= light
            # Each band reads the noise tile at its own offset, so band noises are independent.
            refl += self.texture(3, rows + 197 * b, cols + 89 * b)
            if self.dtype == "float32":
                np.clip(refl, np.float32(1e-4), np.float32(1.0), out=out[b])
            else:
                gain, lo, hi = _SCALE[self.dtype]
                refl *= np.float32(gain)
                np.rint(refl, out=refl)
                np.clip(refl, lo, hi, out=refl)
                out[b] = refl
        return out


def _band_spectra(seed: int, bands: int) -> F64:
    """End-member spectra ``(2, materials, bands)`` for ``bands`` bands.

    One band is panchromatic (the mean of red, green, blue and NIR); up to ten follow
    :data:`geopsp.synthetic.BAND_NAMES`; further bands repeat them with a small per-band gain.
    """
    if bands == 1:
        pan: F64 = _SPECTRA[:, :, :4].mean(axis=2, keepdims=True)
        return pan
    idx = np.arange(bands) % _SPECTRA.shape[2]
    spectra = _SPECTRA[:, :, idx].copy()
    if bands > _SPECTRA.shape[2]:
        gain = 0.9 + 0.2 * unit(hash_coords(layer_key(seed, _K_BANDGAIN), np.arange(bands)))
        gain[: _SPECTRA.shape[2]] = 1.0
        spectra *= gain
    return spectra
