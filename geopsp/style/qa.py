"""QGIS styles for the QA layers: a continuous colour ramp over the decoded values 0..1.

A QA raster stores ``round(255 x)`` with the band scale ``1/255`` (:mod:`geopsp.encoding`);
QGIS applies that scale, so the ramp's stops are the values themselves (0..1). Layers where
high is good (``probability``, ``margin``) run from red (unsure) to green; layers where high
is bad (``entropy``, ``disagreement``) run the other way, and ``disagreement`` draws "all
tiles agree" transparent so only the disagreements show over the map.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from geopsp.encoding import PROBABILITY_SCALE
from geopsp.style.raster import finish_qml, layer_root, min_max_origin

__all__ = ["QA_RAMPS", "qa_qml"]

_RED, _YELLOW, _GREEN = "#d7191c", "#ffffbf", "#1a9641"
_LOWEST = 1.0 / PROBABILITY_SCALE  # the smallest stored value (1), decoded

QA_RAMPS: dict[str, tuple[tuple[float, str, int], ...]] = {
    "probability": ((0.0, _RED, 255), (0.5, _YELLOW, 255), (1.0, _GREEN, 255)),
    "margin": ((0.0, _RED, 255), (0.5, _YELLOW, 255), (1.0, _GREEN, 255)),
    "entropy": ((0.0, _GREEN, 255), (0.5, _YELLOW, 255), (1.0, _RED, 255)),
    "disagreement": ((_LOWEST, "#ffffff", 0), (0.25, "#fdae61", 255), (1.0, _RED, 255)),
}
"""Each QA layer's ramp: ``(value, colour, alpha)`` stops, interpolated linearly."""


def qa_qml(layer: str, *, opacity: float = 1.0) -> str:
    """Return a QGIS 3 style (QML) drawing a QA raster with a continuous colour ramp.

    Parameters
    ----------
    layer : str
        A name in :data:`~geopsp.encoding.QA_LAYERS`.
    opacity : float, default 1.0
        Layer opacity in 0..1.

    Returns
    -------
    str
        The QML document; its legend labels the stops with their values (0.00 .. 1.00).

    Raises
    ------
    ValueError
        For an unknown layer or an opacity outside 0..1.

    Examples
    --------
    >>> qml = qa_qml("entropy")
    >>> 'type="singlebandpseudocolor"' in qml, 'value="1" label="1.00" color="#d7191c"' in qml
    (True, True)
    """
    stops = QA_RAMPS.get(layer)
    if stops is None:
        raise ValueError(f"unknown QA layer {layer!r}; choose from {', '.join(QA_RAMPS)}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}")
    root, pipe = layer_root()
    lo, hi = stops[0][0], stops[-1][0]
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {
            "type": "singlebandpseudocolor",
            "band": "1",
            "opacity": f"{opacity:g}",
            "alphaBand": "-1",
            "nodataColor": "",
            "classificationMin": f"{lo:g}",
            "classificationMax": f"{hi:g}",
        },
    )
    ET.SubElement(renderer, "rasterTransparency")
    min_max_origin(renderer)
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader", {
        "colorRampType": "INTERPOLATED", "classificationMode": "1", "clip": "0",
        "minimumValue": f"{lo:g}", "maximumValue": f"{hi:g}", "labelPrecision": "2",
    })  # fmt: skip
    ramp = ET.SubElement(shader, "colorramp", {"type": "gradient", "name": "[source]"})
    options = ET.SubElement(ramp, "Option", {"type": "Map"})
    inner = ";".join(f"{(v - lo) / (hi - lo):g};{_rgba(c, a)}" for v, c, a in stops[1:-1])
    for name, value in (
        ("color1", _rgba(stops[0][1], stops[0][2])),
        ("color2", _rgba(stops[-1][1], stops[-1][2])),
        ("discrete", "0"),
        ("rampType", "gradient"),
        ("stops", inner),
    ):
        ET.SubElement(options, "Option", {"type": "QString", "name": name, "value": value})
    for stop, colour, alpha in stops:
        ET.SubElement(
            shader, "item", {"alpha": str(alpha), "value": f"{stop:g}", "label": f"{stop:.2f}", "color": colour}
        )
    return finish_qml(root, pipe)


def _rgba(colour: str, alpha: int) -> str:
    """``#rrggbb`` and an alpha as QGIS's ``r,g,b,a``."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"{r},{g},{b},{alpha}"
