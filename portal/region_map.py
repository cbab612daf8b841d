"""The map of "Où utiliser ma carte ?": the region's five départements from the outline shipped in
portal/data/, with the searched point and the partners found, drawn server-side as SVG.

Why no tile server: the Content-Security-Policy allows nothing from another origin, and a map
of a region 250 km across needs no streets. The projection is equirectangular, scaled at 50° N
(the middle of the region), where it distorts distances by under 2 %: plenty for a sketch.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

OUTLINE_FILE = Path(__file__).parent / "data" / "departements-hdf.json"
STANDARD_PARALLEL_DEG = 50.0
MAP_WIDTH_PX = 600                   # the viewBox width; CSS scales it to the screen
MAP_MARGIN_PX = 12                   # room for a marker drawn on the region's edge
KM_PER_DEG_LAT = 111.2               # on the mean Earth sphere
VIEW_MARGIN_RATIO = 0.15             # room around the search circle when the map zooms on it
MARKER_RADIUS_RATIO = 0.025          # a marker's radius, as a share of the shown width


@dataclass(frozen=True)
class Projection:
    """lon/lat in degrees to x/y in the viewBox (y downwards, north up)."""
    lon_min: float
    lat_max: float
    scale_px_per_deg: float

    def point(self, latitude: float, longitude: float) -> tuple[float, float]:
        x = (longitude - self.lon_min) * math.cos(math.radians(STANDARD_PARALLEL_DEG))
        return (round(MAP_MARGIN_PX + x * self.scale_px_per_deg, 1),
                round(MAP_MARGIN_PX + (self.lat_max - latitude) * self.scale_px_per_deg, 1))


@dataclass(frozen=True)
class View:
    """The part of the map shown (an SVG viewBox), and the marker size that reads at that zoom."""
    x: float
    y: float
    width: float
    height: float

    @property
    def box(self) -> str:
        return f"{self.x:g} {self.y:g} {self.width:g} {self.height:g}"

    @property
    def marker_radius(self) -> float:
        return round(self.width * MARKER_RADIUS_RATIO, 1)


@dataclass(frozen=True)
class Departement:
    code: str
    name: str
    path: str                        # the SVG path's d attribute


@dataclass(frozen=True)
class RegionMap:
    width: int
    height: int
    projection: Projection
    departements: tuple[Departement, ...]

    @property
    def whole(self) -> View:
        return View(0, 0, self.width, self.height)

    def around(self, latitude: float, longitude: float, radius_km: float,
               points: list[tuple[float, float]]) -> View:
        """Zoomed on the search circle and the partners found (so that a town's shops do not
        sit on one pixel), with the whole map's proportions; never wider than the whole map."""
        cx, cy = self.projection.point(latitude, longitude)
        half = radius_km / KM_PER_DEG_LAT * self.projection.scale_px_per_deg * (1 + VIEW_MARGIN_RATIO)
        xs = [cx - half, cx + half] + [x for x, _ in points]
        ys = [cy - half, cy + half] + [y for _, y in points]
        width = max(max(xs) - min(xs), (max(ys) - min(ys)) * self.width / self.height)
        if width >= self.width:
            return self.whole
        height = width * self.height / self.width
        x = min(max((min(xs) + max(xs) - width) / 2, 0), self.width - width)
        y = min(max((min(ys) + max(ys) - height) / 2, 0), self.height - height)
        return View(round(x, 1), round(y, 1), round(width, 1), round(height, 1))


def fit(lon_min: float, lon_max: float, lat_min: float, lat_max: float) -> tuple[Projection, int]:
    """The projection that fits the box into MAP_WIDTH_PX, and the height it then needs."""
    shrink = math.cos(math.radians(STANDARD_PARALLEL_DEG))
    scale = (MAP_WIDTH_PX - 2 * MAP_MARGIN_PX) / ((lon_max - lon_min) * shrink)
    height = math.ceil((lat_max - lat_min) * scale + 2 * MAP_MARGIN_PX)
    return Projection(lon_min, lat_max, scale), height


def svg_path(rings: list[list[list[float]]], projection: Projection) -> str:
    parts = []
    for ring in rings:
        points = [projection.point(lat, lon) for lon, lat in ring]
        parts.append("M" + "L".join(f"{x:g},{y:g}" for x, y in points) + "Z")
    return "".join(parts)


@functools.cache
def region_map() -> RegionMap:
    outline = json.loads(OUTLINE_FILE.read_text(encoding="utf-8"))["departements"]
    points = [p for d in outline for ring in d["rings"] for p in ring]
    projection, height = fit(min(p[0] for p in points), max(p[0] for p in points),
                             min(p[1] for p in points), max(p[1] for p in points))
    return RegionMap(MAP_WIDTH_PX, height, projection, tuple(
        Departement(d["code"], d["nom"], svg_path(d["rings"], projection)) for d in outline))
