"""A scene stored in another data type than the model's: judged by its values, converted as tiles are read.

:meth:`InputCast.from_scene` decides (called by
:func:`geopsp.inference.plan.check_scene_for_model`, the one home of "can this model run on
this scene"); :meth:`InputCast.read_rows` converts, strip by strip, as the tile reader reads
them, so no converted copy of the scene is ever written.

The rules (``stored``: the scene's type, ``model``: the bundle's ``input_dtype``):

* the same type, or two float types: the values are used as stored (as always);
* an integer model: every valid value must be a whole number within the model's type
  (uint8: 0..255). When the stored type's whole range fits (uint8 for a uint16 model) that is
  so without a look; otherwise the range is taken from the file's exact statistics
  (:func:`geopsp.io.values.stored_statistics`) or else a sampled read
  (:func:`geopsp.io.values.sample_values`). Values that fit are cast unchanged (a uint16 file
  holding 0..255 gives the classes of the same pixels stored as uint8); values that do not fit
  are refused with advice that keeps them undistorted, or an explicit mapping to state;
* a float model: integer scenes are accepted when their values are exact in float32 (every
  8- and 16-bit type; wider ones are checked), since a float32 copy would hold the same
  numbers. Units are not checked: if the model was trained on scaled values (reflectance
  0..1), ``input_scale`` states the mapping;
* ``input_scale`` (``SRC_MIN, SRC_MAX, DST_MIN, DST_MAX``, as ``gdal_translate -scale``) maps
  every value linearly before anything else, to ``DST_MIN + (v - SRC_MIN) * (DST_MAX -
  DST_MIN) / (SRC_MAX - SRC_MIN)`` (values outside the source range map outside the
  destination range: nothing is clipped); for an integer model the result is rounded to the
  nearest whole number, halves away from zero (as ``gdal_translate`` rounds), and must then
  fit the model's type.

A sample cannot prove that every value fits, so every converted strip is checked again as
it is read: a valid value outside the model's range (or a fraction, for an integer model)
stops the run with one line naming the file, the value, its band, row and column. Nothing is
ever wrapped or clipped, and since a run's outputs are committed together
(:mod:`geopsp.io.atomic`), a stopped run leaves none. Pixels that are not valid are never
checked: the model sees :data:`geopsp.model.inputs.MODEL_FILL` there whatever they hold.

.. versionadded:: 0.2
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from geopsp.errors import InputRasterError

if TYPE_CHECKING:
    from geopsp.io.scene import SceneInfo
    from geopsp.io.source import SceneSource
    from geopsp.io.values import ValueRange
    from geopsp.model.meta import BundleMeta

__all__ = ["InputCast", "InputScale", "RangeSource"]

InputScale = tuple[float, float, float, float]
"""``(SRC_MIN, SRC_MAX, DST_MIN, DST_MAX)``: a linear mapping, as ``gdal_translate -scale``."""

RangeSource = Literal["same type", "same kind", "type range", "statistics", "sample", "every pixel", "no valid pixel"]
"""How a decision was reached: no look needed (the first three) or where the values came from."""

FLOAT32_EXACT = float(2**24)
"""float32 holds every whole number of at most this magnitude exactly."""


_CHUNK_PX = 1 << 20  # values converted at a time: bounds the float64 temporaries of a mapping


def _num(v: float) -> str:
    """Format a value for a message: whole numbers without a decimal point.

    Examples
    --------
    >>> _num(255.0), _num(0.1), _num(-3.0)
    ('255', '0.1', '-3')
    """
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


def _format_scale(scale: InputScale) -> str:
    """``--input-scale`` as typed: four numbers.

    Examples
    --------
    >>> _format_scale((0.0, 1000.0, 0.0, 255.0))
    '0 1000 0 255'
    """
    return " ".join(_num(v) for v in scale)


@dataclass(frozen=True, slots=True)
class InputCast:
    """How a scene's values reach the model: as stored, or converted as they are read.

    Attributes
    ----------
    scene : SceneSource
    bands : tuple of int
        The 1-based scene bands the model reads (for messages).
    stored : str
        The scene's dtype.
    model : str
        The bundle's ``input_dtype``.
    cast_to : str or None
        The dtype strips are converted to as they are read; ``None``: passed on as stored.
    limits : (float, float) or None
        Every valid (mapped) value must lie within, checked on every strip; ``None``: no check.
    whole : bool
        Valid values must be whole numbers (a float scene for an integer model, unmapped).
    input_scale : InputScale or None
        The explicit mapping applied first.
    source : RangeSource
        How the decision was reached.
    observed : (float, float) or None
        The stored values' range found before the run (``None`` when not looked at).
    described : str
        Where ``observed`` comes from, in words (empty when not looked at).
    """

    scene: SceneSource
    bands: tuple[int, ...]
    stored: str
    model: str
    cast_to: str | None = None
    limits: tuple[float, float] | None = None
    whole: bool = False
    input_scale: InputScale | None = None
    source: RangeSource = "same type"
    observed: tuple[float, float] | None = None
    described: str = ""

    @property
    def converts(self) -> bool:
        """True when strips are mapped, cast or checked as they are read."""
        return self.cast_to is not None or self.limits is not None or self.whole or self.input_scale is not None

    @property
    def read_as(self) -> str:
        """The dtype the model's normalization receives."""
        return self.cast_to or self.stored

    @classmethod
    def from_scene(cls, info: SceneInfo, meta: BundleMeta, *, input_scale: InputScale | None = None) -> InputCast:
        """Decide how a scene's values reach a model, reading a bounded sample when the types differ.

        Parameters
        ----------
        info : SceneInfo
        meta : BundleMeta
        input_scale : InputScale, optional
            An explicit linear mapping (``predict.input_scale``).

        Raises
        ------
        InputRasterError
            When the values do not fit the model's type (one line: the file, the model's type
            and range, the values found and where, and a fix that keeps them undistorted).
        """
        return _Decision(info, meta, input_scale).decide()

    @property
    def note(self) -> str | None:
        """The one-line fact a run prints when it maps, casts or accepts another type; ``None`` when not.

        Examples
        --------
        >>> from geopsp.io.source import resolve_scene
        >>> print(InputCast(resolve_scene("s.tif"), (1,), "uint8", "uint16", source="type range").note)
        s.tif: stored as uint8, whose values all fit the model's uint16; used as they are
        """
        name = self.scene.name
        if self.source in ("same type", "same kind") and self.input_scale is None:
            return None
        if self.source == "no valid pixel":
            return (
                f"{name}: stored as {self.stored}; a sampled read found no valid pixel, so values are checked "
                f"against the model's {self.model} as tiles are read"
            )
        found = (
            f"values {_num(self.observed[0])}..{_num(self.observed[1])} ({self.described})"
            if self.observed is not None
            else f"every {self.stored} value"
        )
        later = ""
        if self.source == "sample" and self.limits is not None:
            later = f"; a value outside {_num(self.limits[0])}..{_num(self.limits[1])} met later stops the run"
        if self.input_scale is not None:
            rounded = ", rounded" if np.dtype(self.model).kind in "ui" else ""
            return (
                f"{name}: --input-scale {_format_scale(self.input_scale)} maps {found} into the model's "
                f"{self.model}; read as {self.read_as}{rounded}, no copy written{later}"
            )
        if np.dtype(self.model).kind == "f":
            return (
                f"{name}: stored as {self.stored}; {found} {'are' if self.observed else 'is'} exact in float32, "
                f"given to the model's {self.model} as they are, not rescaled (if it was trained on scaled "
                f"values, state the mapping with --input-scale){later}"
            )
        if self.source == "type range":
            return f"{name}: stored as {self.stored}, whose values all fit the model's {self.model}; used as they are"
        return (
            f"{name}: stored as {self.stored}, {found} fit the model's {self.model}; "
            f"read as {self.read_as}, no copy written{later}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run summary."""
        return {
            "stored_dtype": self.stored,
            "model_dtype": self.model,
            "read_as": self.read_as,
            "input_scale": list(self.input_scale) if self.input_scale is not None else None,
            "range": list(self.observed) if self.observed is not None else None,
            "range_source": self.source,
            "range_detail": self.described or None,
            "checked_on_read": self.limits is not None or self.whole,
        }

    # ------------------------------------------------------------------ reading

    def read_rows(
        self,
        src: Any,
        info: Any,
        row_off: int,
        height: int,
        bands: Any,
        col_off: int = 0,
        width: int | None = None,
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """:func:`geopsp.io.scene.read_rows`, its data converted by :meth:`convert`."""
        from geopsp.io.scene import read_rows

        data, valid = read_rows(src, info, row_off, height, bands, col_off, width)
        return self.convert(data, valid, row_off=row_off, col_off=col_off), valid

    def convert(
        self, data: NDArray[Any], valid: NDArray[np.bool_], *, row_off: int = 0, col_off: int = 0
    ) -> NDArray[Any]:
        """Map, check and cast raw ``(C, H, W)`` values read at ``(row_off, col_off)``.

        Returns
        -------
        ndarray
            ``(C, H, W)`` of :attr:`read_as`; ``data`` itself when nothing converts.

        Raises
        ------
        InputRasterError
            At the first valid value that does not fit (see the module docstring).
        """
        if not self.converts:
            return data
        out = data if self.cast_to is None and self.input_scale is None else np.empty(data.shape, self.read_as)
        step = max(1, _CHUNK_PX // max(1, data.shape[2]))
        with np.errstate(invalid="ignore", over="ignore"):  # only invalid pixels can be NaN or overflow
            for i in range(data.shape[0]):
                for r in range(0, data.shape[1], step):
                    raw = data[i, r : r + step]
                    ok = valid[r : r + step]
                    value = self._map(raw)
                    self._check(raw, value, ok, band=self.bands[i], row=row_off + r, col=col_off)
                    if out is not data:
                        out[i, r : r + step] = value
        return out

    def _map(self, raw: NDArray[Any]) -> NDArray[Any]:
        if self.input_scale is None:
            return raw
        gain, offset = _gain_offset(self.input_scale)
        value = raw.astype(np.float64) * gain + offset
        if np.dtype(self.read_as).kind in "ui":
            value = _round(value)
        return value

    def _check(
        self, raw: NDArray[Any], value: NDArray[Any], ok: NDArray[np.bool_], *, band: int, row: int, col: int
    ) -> None:
        if self.limits is None and not self.whole:
            return
        every = bool(ok.all())
        seen = value if every else value[ok]
        if seen.size == 0:
            return
        bad = np.zeros(value.shape, dtype=np.bool_)
        if self.limits is not None:
            lo, hi = self.limits
            if float(seen.min()) < lo or float(seen.max()) > hi:
                bad |= (value < lo) | (value > hi)
        if self.whole and not bool(np.all(seen == np.floor(seen))):
            bad |= value != np.floor(value)
        if not every:
            bad &= ok
        if not bad.any():
            return
        r, c = (int(k) for k in np.argwhere(bad)[0])
        raise InputRasterError(self._read_error(float(raw[r, c]), float(value[r, c]), band, row + r, col + c))

    def _read_error(self, raw: float, value: float, band: int, row: int, col: int) -> str:
        mapped = f" (mapped to {_num(value)})" if self.input_scale is not None else ""
        where = f"band {band}, row {row}, column {col}"
        if self.limits is not None and not self.limits[0] <= value <= self.limits[1]:
            what = f"outside the model's {self.model} range {_num(self.limits[0])}..{_num(self.limits[1])}"
        else:
            what = f"not a whole number, as the model's {self.model} needs"
        before = (
            f"; the check before the run found {_num(self.observed[0])}..{_num(self.observed[1])} ({self.described})"
            if self.observed is not None
            else ""
        )
        if self.input_scale is not None:
            fix = "choose an --input-scale whose source range covers the data (gdalinfo -stats gives its extremes)"
        else:
            fix = _advice(self.scene, self.stored, self.model)
        if self.source == "sample":
            fix += f" (gdalinfo -stats {self.scene.name} stores the exact extremes, which a next run checks first)"
        return f"{self.scene}: value {_num(raw)}{mapped} at {where} is {what}{before}; the run stops here; {fix}"


def _gain_offset(scale: InputScale) -> tuple[float, float]:
    """Return ``(a, b)`` of ``v * a + b``.

    Examples
    --------
    >>> _gain_offset((0.0, 1000.0, 0.0, 255.0))
    (0.255, 0.0)
    """
    s0, s1, d0, d1 = scale
    gain = (d1 - d0) / (s1 - s0)
    return gain, d0 - s0 * gain


def _round(value: NDArray[np.float64]) -> NDArray[np.float64]:
    """Round to the nearest whole number, halves away from zero (as GDAL casts to integers).

    Examples
    --------
    >>> _round(np.array([0.5, 1.5, -0.5, 2.4])).tolist()
    [1.0, 2.0, -1.0, 2.0]
    """
    out: NDArray[np.float64] = np.copysign(np.floor(np.abs(value) + 0.5), value)
    return out


def _type_range(dtype: str) -> tuple[float, float]:
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def _advice(scene: SceneSource, stored: str, model: str, *, rounded: bool = False) -> str:
    """Advise a fix that does not distort the values: the mapping the training data were made with, or another model.

    No source range is filled in: stretching the values found to the model's range is exactly
    the distortion to avoid, unless the training data were stretched the same way.

    Examples
    --------
    >>> from geopsp.io.source import resolve_scene
    >>> _advice(resolve_scene("a/s2.tif"), "uint16", "uint8")  # doctest: +NORMALIZE_WHITESPACE
    'if the training data were made from such values by a linear mapping, state it: --input-scale SRC_MIN
    SRC_MAX 0 255 (or gdal_translate -ot Byte -scale SRC_MIN SRC_MAX 0 255 s2.tif s2_uint8.tif); else use a
    model trained on uint16 data'
    """
    other = f"use a model trained on {stored} data"
    if np.dtype(model).kind not in "ui":
        return f"state the mapping to the training data's units with --input-scale, or {other}"
    t0, t1 = _type_range(model)
    s = f"SRC_MIN SRC_MAX {_num(t0)} {_num(t1)}"
    from geopsp.io.vrt import gdal_type_name

    gdal = gdal_type_name(model)
    return (
        f"if the training data were made from such values by a linear mapping, state it: --input-scale {s}"
        f"{' (values are rounded)' if rounded else ''} "
        f"(or gdal_translate -ot {gdal} -scale {s} {scene.name} {scene.stem}_{model}.tif); else {other}"
    )


class _Decision:
    """The steps of :meth:`InputCast.from_scene`, cheapest first."""

    def __init__(self, info: SceneInfo, meta: BundleMeta, scale: InputScale | None) -> None:
        self.info = info
        self.meta = meta
        self.scale = scale
        self.stored = info.dtype
        self.model = meta.input_dtype
        self.skind = np.dtype(self.stored).kind
        self.mkind = np.dtype(self.model).kind
        self.base = InputCast(info.source, tuple(meta.bands), self.stored, self.model, input_scale=scale)

    def decide(self) -> InputCast:
        from geopsp.io.values import sample_values, stored_statistics

        if self.skind not in "uif" or self.mkind not in "uif":
            raise InputRasterError(
                f"{self.info.source}: the model was trained on {self.model} scenes but this scene is {self.stored}; "
                f"convert it to {self.model} in the same units as the training data"
            )
        if self.scale is None and (self.stored == self.model or (self.skind == "f" and self.mkind == "f")):
            return replace(self.base, source="same type" if self.stored == self.model else "same kind")
        fit = replace(self.base, cast_to=self._cast_to(), limits=self._limits(), whole=self._whole())
        if self._type_range_fits() or (fit.limits is None and not fit.whole):
            # no value can miss; unmapped, the same numbers need no cast either
            cast_to = fit.cast_to if self.scale is not None else None
            return replace(fit, source="type range", cast_to=cast_to, limits=None, whole=False)
        stats = stored_statistics(self.info, self.meta.bands)
        if stats is not None:
            if self._fits(stats) and stats.bound and not fit.whole:
                return self._accepted(fit, stats)
            if stats.attained and not self._range_fits(stats.low, stats.high):
                raise InputRasterError(self._refusal(stats))
        sample = sample_values(self.info, self.meta.bands)
        if sample.low is None or sample.high is None:
            return replace(fit, source="no valid pixel", described=sample.described)
        if not self._range_fits(sample.low, sample.high) or (fit.whole and not sample.whole):
            raise InputRasterError(self._refusal(sample))
        return self._accepted(fit, sample)

    # the target

    def _cast_to(self) -> str | None:
        if self.mkind in "ui":
            return self.model
        return "float32" if self.scale is not None else None

    def _limits(self) -> tuple[float, float] | None:
        if self.mkind in "ui":
            return _type_range(self.model)
        if self.scale is None and np.dtype(self.stored).itemsize >= 4:
            return (-FLOAT32_EXACT, FLOAT32_EXACT)
        return None

    def _whole(self) -> bool:
        return self.mkind in "ui" and self.skind == "f" and self.scale is None

    # the values

    def _mapped(self, lo: float, hi: float) -> tuple[float, float]:
        if self.scale is None:
            return lo, hi
        gain, offset = _gain_offset(self.scale)
        a, b = sorted((lo * gain + offset, hi * gain + offset))
        if self.mkind in "ui":
            a, b = (float(v) for v in _round(np.array([a, b])))
        return a, b

    def _range_fits(self, lo: float | None, hi: float | None) -> bool:
        limits = self._limits()
        if limits is None or lo is None or hi is None:
            return True
        a, b = self._mapped(lo, hi)
        return limits[0] <= a and b <= limits[1]

    def _fits(self, found: ValueRange) -> bool:
        return self._range_fits(found.low, found.high) and all(self._range_fits(v, v) for v in found.also)

    def _type_range_fits(self) -> bool:
        if self.skind not in "ui":
            return False
        lo, hi = _type_range(self.stored)
        return self._range_fits(lo, hi)

    def _accepted(self, fit: InputCast, found: ValueRange) -> InputCast:
        assert found.low is not None and found.high is not None
        return replace(fit, source=found.source, observed=(found.low, found.high), described=found.described)

    def _refusal(self, found: ValueRange) -> str:
        assert found.low is not None and found.high is not None
        path, stored, model = self.info.source, self.stored, self.model
        values = f"{_num(found.low)}..{_num(found.high)} ({found.described})"
        if self.scale is not None:
            a, b = self._mapped(found.low, found.high)
            limits = self._limits()
            assert limits is not None
            return (
                f"{path}: --input-scale {_format_scale(self.scale)} maps this scene's values {values} to "
                f"{_num(a)}..{_num(b)}, outside the model's {model} range {_num(limits[0])}..{_num(limits[1])}; "
                f"choose a mapping onto {_num(limits[0])}..{_num(limits[1])}"
            )
        if self.mkind == "f":
            return (
                f"{path}: the model reads {model}, which holds whole numbers exactly only up to "
                f"{_num(FLOAT32_EXACT)}, but this {stored} scene holds {values}; "
                f"{_advice(path, stored, model)}"
            )
        t0, t1 = _type_range(model)
        if self._range_fits(found.low, found.high):  # in range, but fractions
            example = f" such as {_num(found.example)}" if found.example is not None else ""
            return (
                f"{path}: the model reads whole {model} numbers ({_num(t0)}..{_num(t1)}) but this {stored} scene "
                f"holds fractions{example} among {values}; a type change alone would round them; "
                f"{_advice(path, stored, model, rounded=True)}"
            )
        sampled = f"; gdalinfo -stats {path.name} gives the exact extremes" if found.source == "sample" else ""
        return (
            f"{path}: the model reads {model} ({_num(t0)}..{_num(t1)}) but this {stored} scene holds {values}, "
            f"which a type change alone would alter; {_advice(path, stored, model)}{sampled}"
        )
