"""Find a student's town by name or postcode in the communes file shipped in portal/data/.

Why in Python and not in the ledger: it is static public data (the region's 3,808 communes,
rebuilt by portal/data/build_geodata.py), read once into memory; the ledger keeps what changes.
Names match whatever the student types: case, accents, hyphens, apostrophes and "St"/"Ste" for
"Saint"/"Sainte" do not matter. A postcode shared by several communes gives their mean centre.
"""

from __future__ import annotations

import csv
import difflib
import functools
import gzip
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

COMMUNES_FILE = Path(__file__).parent / "data" / "communes-hdf.csv.gz"
MAX_QUERY_CHARS = 80                 # longer than any commune's name with its postcode
MAX_SUGGESTIONS = 5                  # towns proposed for a name not found, or a homonym
SUGGESTION_CUTOFF_RATIO = 0.75       # difflib similarity, 0..1, below which a name is no hint
POSTCODE = re.compile(r"\b(\d{5})\b")
REGION_POSTCODE_PREFIXES = ("02", "59", "60", "62", "80")


@dataclass(frozen=True)
class Town:
    name: str
    postcodes: tuple[str, ...]
    latitude: float
    longitude: float

    @property
    def label(self) -> str:
        return f"{self.name} ({self.postcodes[0]})"


@dataclass(frozen=True)
class Place:
    """Where a search is centred, and how to name it to the student."""
    label: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class NotFound:
    """Why a query found no place, in French, and the towns it may have meant."""
    message: str
    suggestions: tuple[Town, ...] = ()


def normalise(text: str) -> str:
    """'Saint-Quentin', 'ST QUENTIN' and 'saint quentin' are the same key."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^a-z0-9]+", " ", text).split()
    return " ".join({"st": "saint", "ste": "sainte"}.get(word, word) for word in words)


@functools.cache
def communes() -> tuple[Town, ...]:
    with gzip.open(COMMUNES_FILE, "rb") as raw:
        lines = (line for line in io.TextIOWrapper(raw, encoding="utf-8") if not line.startswith("#"))
        return tuple(Town(name, tuple(codes.split()), float(lat), float(lon))
                     for name, codes, lat, lon in csv.reader(lines, delimiter=";"))


@functools.cache
def _by_name() -> dict[str, tuple[Town, ...]]:
    index: dict[str, list[Town]] = {}
    for town in communes():
        index.setdefault(normalise(town.name), []).append(town)
    return {key: tuple(towns) for key, towns in index.items()}


def find_place(query: str) -> Place | NotFound:
    """A town's name, a postcode, or both ("Arras 62000"), to the point a search starts from."""
    query = query.strip()
    if not query:
        return NotFound("Indiquez une ville ou un code postal.")
    if len(query) > MAX_QUERY_CHARS:
        return NotFound(f"Écrivez au plus {MAX_QUERY_CHARS} caractères.")
    postcode_match = POSTCODE.search(query)
    postcode = postcode_match.group(1) if postcode_match else None
    name = normalise(POSTCODE.sub(" ", query))
    if postcode and not postcode.startswith(REGION_POSTCODE_PREFIXES):
        return NotFound(f"Le code postal {postcode} n'est pas dans les Hauts-de-France "
                        "(Aisne, Nord, Oise, Pas-de-Calais, Somme).")
    if name:
        towns = _by_name().get(name, ())
        if postcode:
            towns = tuple(t for t in towns if postcode in t.postcodes)
        if len(towns) == 1:
            return Place(towns[0].label, towns[0].latitude, towns[0].longitude)
        if len(towns) > 1:
            return NotFound("Plusieurs communes portent ce nom : choisissez la vôtre.",
                            towns[:MAX_SUGGESTIONS])
        return NotFound(f"Nous ne trouvons pas la commune « {query} » dans les Hauts-de-France.",
                        suggestions(name))
    towns = tuple(t for t in communes() if postcode in t.postcodes)
    if not towns:
        return NotFound(f"Nous ne trouvons pas le code postal {postcode} dans les Hauts-de-France.")
    if len(towns) == 1:
        return Place(towns[0].label, towns[0].latitude, towns[0].longitude)
    return Place(f"code postal {postcode}", sum(t.latitude for t in towns) / len(towns),
                 sum(t.longitude for t in towns) / len(towns))


def suggestions(name: str) -> tuple[Town, ...]:
    """Towns whose name begins like the query, else whose name is close to it."""
    index = _by_name()
    keys = [key for key in index if key.startswith(name)] if len(name) >= 3 else []
    keys = sorted(keys, key=len)[:MAX_SUGGESTIONS] or difflib.get_close_matches(
        name, index, n=MAX_SUGGESTIONS, cutoff=SUGGESTION_CUTOFF_RATIO)
    return tuple(town for key in keys for town in index[key])[:MAX_SUGGESTIONS]
