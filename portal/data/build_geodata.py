"""Rebuild the two small geographic files "Où utiliser ma carte ?" ships, from open data.

Why a script: the files are trimmed and simplified copies of public datasets; a maintainer who
needs newer boundaries or postcodes reruns this instead of editing numbers by hand.

Sources (see portal/data/README.md for where to download them and their licences):
  --departements  departements-hauts-de-france.geojson  (gregoiredavid/france-geojson, IGN
                  Admin Express COG 2018, Licence Ouverte / Etalab)
  --communes      communes-hauts-de-france.geojson      (same repository and licence)
  --postcodes     code_postaux_v201410_corr.csv         (La Poste, base officielle des codes
                  postaux 2014, as corrected in BaseAdresseNationale/codes-postaux; ODbL)

Outputs, beside this file:
  departements-hdf.json  each département's outer rings, Douglas-Peucker simplified
  communes-hdf.csv.gz    name;postcodes;latitude;longitude, one commune a line (ODbL),
                         gzipped: 127 kB of text is 40 kB so

    python portal/data/build_geodata.py --departements D.geojson --communes C.geojson \\
        --postcodes code_postaux_v201410_corr.csv
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
REGION_DEPARTEMENTS = ("02", "59", "60", "62", "80")
# About 1 km at 50° N: the map is drawn a few hundred pixels wide, a finer outline is invisible.
SIMPLIFY_TOLERANCE_DEG = 0.012
# A ring smaller than this (in square degrees, about 7 km²) is dropped: an enclave or an islet
# is noise at the map's scale.
MIN_RING_AREA_SQ_DEG = 0.001
OUTLINE_DECIMALS = 3            # 0.001° ≈ 100 m
TOWN_DECIMALS = 3               # 0.001° ≈ 100 m: a commune's centre, not an address
POSTCODES_ENCODING = "latin-1"  # La Poste's 2014 file is not UTF-8


def simplify(points: list[tuple[float, float]], tolerance: float) -> list[tuple[float, float]]:
    """Douglas-Peucker, iterative (a ring has thousands of points)."""
    if len(points) < 3:
        return points
    keep = [False] * len(points)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        (x1, y1), (x2, y2) = points[first], points[last]
        length = math.hypot(x2 - x1, y2 - y1)
        farthest, index = -1.0, first
        for i in range(first + 1, last):
            x0, y0 = points[i]
            distance = (abs((x2 - x1) * (y1 - y0) - (x1 - x0) * (y2 - y1)) / length if length
                        else math.hypot(x0 - x1, y0 - y1))
            if distance > farthest:
                farthest, index = distance, i
        if farthest > tolerance:
            keep[index] = True
            stack += [(first, index), (index, last)]
    return [p for p, kept in zip(points, keep) if kept]


def ring_area(ring: list) -> float:
    return abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1]))) / 2


def ring_centroid(ring: list) -> tuple[float, float]:
    """The centroid of a polygon's outer ring (shoelace), as (lon, lat)."""
    area = cx = cy = 0.0
    for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1]):
        cross = x1 * y2 - x2 * y1
        area += cross
        cx += (x1 + x2) * cross
        cy += (y1 + y2) * cross
    if not area:
        return ring[0][0], ring[0][1]
    return cx / (3 * area), cy / (3 * area)


def outer_rings(geometry: dict) -> list[list]:
    polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    return [polygon[0] for polygon in polygons]


def build_departements(source: Path) -> dict:
    features = json.loads(source.read_text(encoding="utf-8"))["features"]
    departements = []
    for feature in sorted(features, key=lambda f: f["properties"]["code"]):
        rings = []
        for ring in outer_rings(feature["geometry"]):
            if ring_area(ring) < MIN_RING_AREA_SQ_DEG:
                continue
            simple = simplify([tuple(p) for p in ring], SIMPLIFY_TOLERANCE_DEG)
            rings.append([[round(x, OUTLINE_DECIMALS), round(y, OUTLINE_DECIMALS)] for x, y in simple])
        departements.append({"code": feature["properties"]["code"],
                             "nom": feature["properties"]["nom"], "rings": rings})
    return {"source": "IGN Admin Express COG 2018 via gregoiredavid/france-geojson, Licence Ouverte",
            "departements": departements}


def build_communes(communes: Path, postcodes: Path) -> list[tuple[str, str, float, float]]:
    by_insee: dict[str, set[str]] = defaultdict(set)
    with postcodes.open(encoding=POSTCODES_ENCODING) as source:
        for row in csv.DictReader(source, delimiter=";"):
            by_insee[row["code commune INSEE"]].add(row["code postal"])
    towns = []
    for feature in json.loads(communes.read_text(encoding="utf-8"))["features"]:
        code, name = feature["properties"]["code"], feature["properties"]["nom"]
        if code[:2] not in REGION_DEPARTEMENTS or not by_insee.get(code):
            continue           # a commune created after 2014 has no postcode in the 2014 base
        largest = max(outer_rings(feature["geometry"]), key=ring_area)
        lon, lat = ring_centroid(largest)
        towns.append((name, " ".join(sorted(by_insee[code])), round(lat, TOWN_DECIMALS),
                      round(lon, TOWN_DECIMALS)))
    return sorted(towns, key=lambda t: (t[1], t[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--departements", type=Path, required=True)
    parser.add_argument("--communes", type=Path, required=True)
    parser.add_argument("--postcodes", type=Path, required=True)
    arguments = parser.parse_args()
    outline = build_departements(arguments.departements)
    (HERE / "departements-hdf.json").write_text(
        json.dumps(outline, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    towns = build_communes(arguments.communes, arguments.postcodes)
    # mtime=0: the same sources give the same bytes, so a rebuild without change is no diff.
    with gzip.GzipFile(HERE / "communes-hdf.csv.gz", "wb", compresslevel=9, mtime=0) as raw, \
            io.TextIOWrapper(raw, encoding="utf-8", newline="") as out:
        out.write("# Communes des Hauts-de-France : nom;codes postaux;latitude;longitude. "
                  "IGN Admin Express 2018 (Licence Ouverte) et La Poste 2014 (ODbL).\n")
        csv.writer(out, delimiter=";", lineterminator="\n").writerows(towns)
    points = sum(len(r) for d in outline["departements"] for r in d["rings"])
    print(f"{len(outline['departements'])} départements, {points} points; {len(towns)} communes")


if __name__ == "__main__":
    main()
