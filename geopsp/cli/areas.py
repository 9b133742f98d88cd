"""The class areas table on stderr: what ``geopsp predict`` and ``geopsp batch`` print at the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geopsp.inference.area_table import ClassArea, ClassAreas

__all__ = ["print_class_areas"]

_METHODS = {
    "planar": "m² from the pixel size",
    "geodesic": "geodesic m² on the CRS's ellipsoid",
    "mixed": "m² planar and geodesic",
    "none": "no CRS: no m², shares of pixels",
}


def print_class_areas(table: ClassAreas, *, title: str, csv: str | None = None) -> None:
    """Print ``table`` as a rich table on stderr (stdout stays machine-readable).

    Parameters
    ----------
    table : ClassAreas
        The table to print.
    title : str
        Its title (a scene name, ``"3 scenes"``).
    csv : str, optional
        Where the table was written, named under it.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def number(value: float | int | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    caption = _METHODS.get(table.method, table.method)
    if table.nodata_pixels:
        caption += f"; {table.nodata_pixels:,} nodata pixels left out"
    out = Table(title=f"Class areas: {escape(title)}", caption=caption, show_footer=True)
    totals = table.totals()
    # (header, footer, cell of a row); the m² and polygons columns only where there are any
    columns: list[tuple[str, str, Callable[[ClassArea], str]]] = [
        ("id", "", lambda r: str(r.id)),
        ("class", "total", lambda r: escape(r.name)),
        ("pixels", number(totals["pixels"], ","), lambda r: number(r.pixels, ",")),
    ]
    if totals["area_m2"] is not None:
        columns.append(("area m²", number(totals["area_m2"], ",.1f"), lambda r: number(r.area_m2, ",.1f")))
    columns.append(("%", number(totals["percent"], ".2f"), lambda r: number(r.percent, ".2f")))
    if totals["polygon_count"] is not None:
        columns.append(("polygons", number(totals["polygon_count"], ","), lambda r: number(r.polygon_count, ",")))
    for header, footer, _ in columns:
        out.add_column(header, footer, justify="left" if header == "class" else "right")
    for r in table.rows:
        out.add_row(*(cell(r) for _, _, cell in columns))
    console = Console(stderr=True, highlight=False)
    console.print(out)
    if csv:
        console.print(f"class areas table: {escape(csv)}", soft_wrap=True)
