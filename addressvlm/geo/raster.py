"""Square, north-up, metre-true crops of a georeferenced raster: a GeoTIFF (any CRS) or an XYZ tile folder.

Every crop is resampled onto a local azimuthal-equidistant grid centred on the requested point, so ``size_m``
means ground metres whatever the source projection (Web Mercator stretches by 1/cos(lat), UTM is close to true,
EPSG:4326 is in degrees). Only the window around the crop is read from disk, decimated on read when the source is
much finer than the output.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from addressvlm.geo.local_frame import local_crs

WEB_MERCATOR = CRS.from_epsg(3857)
WEB_MERCATOR_HALF_WORLD = 20037508.342789244  # metres from the centre to the edge of the EPSG:3857 square
TILE_SUFFIXES = (".png", ".jpg", ".jpeg")
BOUNDARY_SAMPLES = 16  # points per side when projecting the crop outline (edges curve in other projections)


class RasterError(ValueError):
    """A raster that cannot serve a crop; the message names the file or folder."""


def _crop_outline(size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Points along the border of the crop square in local metres (x east, y north)."""
    h = size_m / 2
    t = np.linspace(-h, h, BOUNDARY_SAMPLES)
    xs = np.concatenate([t, np.full_like(t, h), t[::-1], np.full_like(t, -h)])
    ys = np.concatenate([np.full_like(t, h), t[::-1], np.full_like(t, -h), t])
    return xs, ys


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """(bands, h, w) of any dtype -> (h, w, 3) uint8. Non-8-bit imagery gets a 2-98 percentile stretch."""
    if array.shape[0] >= 3:
        array = array[:3]
    else:
        array = np.repeat(array[:1], 3, axis=0)
    if array.dtype != np.uint8:
        data = array.astype(np.float32)
        valid = data[data > 0]
        lo, hi = (np.percentile(valid, [2, 98]) if valid.size else (0.0, 1.0))
        data = np.clip((data - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255)
        array = data.astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(array, 0, -1))


def _warp_to_local(source: np.ndarray, src_transform: Affine, src_crs, lat: float, lon: float,
                   size_m: float, pixels: int) -> np.ndarray:
    res = size_m / pixels
    dst_transform = Affine(res, 0.0, -size_m / 2, 0.0, -res, size_m / 2)
    destination = np.zeros((source.shape[0], pixels, pixels), dtype=source.dtype)
    reproject(source, destination, src_transform=src_transform, src_crs=src_crs, dst_transform=dst_transform,
              dst_crs=local_crs(lat, lon), resampling=Resampling.bilinear, src_nodata=None, dst_nodata=0)
    return destination


class GeoTiffRaster:
    """A GeoTIFF (or any single file GDAL reads with a geotransform) in whatever CRS it declares."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise RasterError(f"{self.path}: raster not found")
        try:
            self.dataset = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as exc:
            raise RasterError(f"{self.path}: cannot open as a raster ({exc})") from None
        if self.dataset.crs is None or self.dataset.transform == Affine.identity():
            self.dataset.close()
            raise RasterError(f"{self.path}: not georeferenced (no CRS or geotransform)")
        self._bands = [1, 2, 3] if self.dataset.count >= 3 else [1]

    def read_square(self, lat: float, lon: float, size_m: float, pixels: int) -> Image.Image:
        ds = self.dataset
        to_src = Transformer.from_crs(local_crs(lat, lon), ds.crs, always_xy=True)
        xs, ys = to_src.transform(*_crop_outline(size_m))
        cols, rows = ~ds.transform @ (np.asarray(xs), np.asarray(ys))
        centre_col, centre_row = ~ds.transform @ to_src.transform(0.0, 0.0)
        if not (0 <= centre_col < ds.width and 0 <= centre_row < ds.height):
            raise RasterError(f"{self.path}: point lat={lat}, lon={lon} lies outside the raster")
        col0, row0 = max(int(math.floor(cols.min())) - 2, 0), max(int(math.floor(rows.min())) - 2, 0)
        col1, row1 = min(int(math.ceil(cols.max())) + 2, ds.width), min(int(math.ceil(rows.max())) + 2, ds.height)
        window = Window(col0, row0, col1 - col0, row1 - row0)
        # Source pixels per output pixel along the crop side; read decimated when the source is much finer.
        side_in_source = math.hypot(cols[BOUNDARY_SAMPLES - 1] - cols[0], rows[BOUNDARY_SAMPLES - 1] - rows[0])
        factor = max(1, int(side_in_source / pixels / 1.5))
        out_h, out_w = max(1, math.ceil(window.height / factor)), max(1, math.ceil(window.width / factor))
        data = ds.read(self._bands, window=window, out_shape=(len(self._bands), out_h, out_w),
                       resampling=Resampling.average)
        transform = ds.window_transform(window) @ Affine.scale(window.width / out_w, window.height / out_h)
        warped = _warp_to_local(data, transform, ds.crs, lat, lon, size_m, pixels)
        return Image.fromarray(_to_rgb(warped), "RGB")

    def close(self) -> None:
        self.dataset.close()


class TileFolderRaster:
    """An XYZ (slippy-map) tile folder ``{z}/{x}/{y}.png|jpg`` in Web Mercator, as web map servers cut them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.zooms = sorted(int(p.name) for p in self.path.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)) \
            if self.path.is_dir() else []
        if not self.zooms:
            raise RasterError(f"{self.path}: no zoom folders {{z}}/{{x}}/{{y}}.png|jpg found")
        sample = next((f for f in (self.path / str(self.zooms[-1])).rglob("*") if f.suffix.lower() in TILE_SUFFIXES),
                      None)
        if sample is None:
            raise RasterError(f"{self.path}/{self.zooms[-1]}: zoom folder holds no tiles")
        with Image.open(sample) as im:
            self.tile_px = im.size[0]

    def _tile_file(self, z: int, x: int, y: int) -> Path | None:
        for suffix in TILE_SUFFIXES:
            f = self.path / str(z) / str(x) / f"{y}{suffix}"
            if f.is_file():
                return f
        return None

    def _zoom_for(self, lat: float, metres_per_pixel: float) -> int:
        """The coarsest zoom at least as fine as the output, else the finest there is."""
        for z in self.zooms:
            ground = 2 * WEB_MERCATOR_HALF_WORLD * math.cos(math.radians(lat)) / (self.tile_px * 2 ** z)
            if ground <= metres_per_pixel:
                return z
        return self.zooms[-1]

    def read_square(self, lat: float, lon: float, size_m: float, pixels: int) -> Image.Image:
        z = self._zoom_for(lat, size_m / pixels)
        world_px = self.tile_px * 2 ** z
        metres_per_px = 2 * WEB_MERCATOR_HALF_WORLD / world_px
        to_merc = Transformer.from_crs(local_crs(lat, lon), WEB_MERCATOR, always_xy=True)
        xs, ys = to_merc.transform(*_crop_outline(size_m))
        px = (np.asarray(xs) + WEB_MERCATOR_HALF_WORLD) / metres_per_px
        py = (WEB_MERCATOR_HALF_WORLD - np.asarray(ys)) / metres_per_px
        tx0, tx1 = int(px.min() // self.tile_px), int(px.max() // self.tile_px)
        ty0, ty1 = int(py.min() // self.tile_px), int(py.max() // self.tile_px)
        cx, cy = to_merc.transform(0.0, 0.0)
        centre_tile = (int((cx + WEB_MERCATOR_HALF_WORLD) / metres_per_px // self.tile_px),
                       int((WEB_MERCATOR_HALF_WORLD - cy) / metres_per_px // self.tile_px))
        if self._tile_file(z, *centre_tile) is None:
            raise RasterError(f"{self.path}: no tile {z}/{centre_tile[0]}/{centre_tile[1]} under lat={lat}, lon={lon}")
        t = self.tile_px
        mosaic = np.zeros((3, (ty1 - ty0 + 1) * t, (tx1 - tx0 + 1) * t), dtype=np.uint8)
        for tx in range(tx0, tx1 + 1):
            for ty in range(ty0, ty1 + 1):
                f = self._tile_file(z, tx, ty)
                if f is None:
                    continue  # edge of the covered area: left black, like a GeoTIFF's outside
                try:
                    with Image.open(f) as im:
                        tile = np.asarray(im.convert("RGB"))
                except (OSError, SyntaxError) as exc:
                    raise RasterError(f"{f}: unreadable tile ({exc})") from None
                if tile.shape[:2] != (t, t):
                    raise RasterError(f"{f}: tile is {tile.shape[1]}x{tile.shape[0]}, expected {t}x{t}")
                mosaic[:, (ty - ty0) * t:(ty - ty0 + 1) * t, (tx - tx0) * t:(tx - tx0 + 1) * t] = np.moveaxis(tile, -1, 0)
        transform = Affine(metres_per_px, 0.0, -WEB_MERCATOR_HALF_WORLD + tx0 * t * metres_per_px,
                           0.0, -metres_per_px, WEB_MERCATOR_HALF_WORLD - ty0 * t * metres_per_px)
        warped = _warp_to_local(mosaic, transform, WEB_MERCATOR, lat, lon, size_m, pixels)
        return Image.fromarray(_to_rgb(warped), "RGB")

    def close(self) -> None:
        pass


def open_raster(path: str | os.PathLike) -> GeoTiffRaster | TileFolderRaster:
    """A folder is an XYZ tile pyramid; a file is opened with rasterio."""
    path = Path(path)
    if path.is_dir():
        return TileFolderRaster(path)
    return GeoTiffRaster(path)


def find_city_raster(city_root: str | os.PathLike) -> Path:
    """The city's imagery per docs/design.md: ``satellite.tif`` or else ``tiles/``."""
    root = Path(city_root)
    for candidate in (root / "satellite.tif", root / "tiles"):
        if candidate.exists():
            return candidate
    raise RasterError(f"{root}: neither satellite.tif nor tiles/ found (pass the raster explicitly)")
