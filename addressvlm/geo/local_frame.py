"""The local metric frame distances are measured in, kept apart from the raster code so that what measures street
distances (``geo.streets``, ``answering.street_error``, the reward) imports without rasterio: the reward also runs in
the modern environment (.venv-modern, requirements-modern.txt), which has pyproj and shapely but no rasterio.
"""
from __future__ import annotations

from pyproj import CRS


def local_crs(lat: float, lon: float) -> CRS:
    """Azimuthal equidistant CRS centred on (lat, lon), in metres: true distances from the centre."""
    return CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs")
