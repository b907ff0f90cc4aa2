"""Satellite-view and street-view image grafting (paper eq. 3, Fig. 2, Table 1).

``I_s = M * I_sa + (1 - M) * I_st``: the satellite crop resized to ``size`` x ``size``, the street view scaled so its
longer side is ``delta * size`` and pasted into a corner (the paper's upper right); M is 0 exactly on the pasted box.
The two other inputs of Table 1 are here too: "stitched" (side by side at equal height, padded square) and
"separate" (two images, trained by recipes/ablations/table1_two_images_stage1.py; docs/stage1.md section 5).

The batch path is built for throughput: JPEG street views are decoded in draft mode straight at 1/2, 1/4 or 1/8
scale (libjpeg's DCT scaling) instead of full size, a satellite crop shared by several views is decoded once per
worker, and pairs are spread over a process pool.
"""
from __future__ import annotations

import os
from concurrent.futures import as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from addressvlm.core.processes import default_workers, worker_pool
from addressvlm.core.records import DataError, path_inside_root, read_jsonl, read_locations, refuse_output_over_inputs
from addressvlm.geo.crop import check_run_params, read_crop_index

CORNERS = ("upper_right", "upper_left", "lower_right", "lower_left")
VARIANTS = ("grafted", "stitched", "separate")
# LLaVA pads to square with the CLIP image mean; stitched images are padded the same way.
PAD_COLOR = (122, 116, 104)
SEPARATE_SUFFIXES = (".satellite.jpg", ".street.jpg")
JPEG_QUALITY = 95
CHUNK = 32  # pairs per pool task: large enough to amortise the round trip, small enough to balance


class GraftError(ValueError):
    """An input image that is missing or cannot be decoded; the message names the file."""


def street_view_size(width: int, height: int, delta: float, size: int) -> tuple[int, int]:
    """The pasted street view's size: its longer side is ``delta * size``, aspect ratio kept."""
    if not 0 < delta <= 1:
        raise ValueError(f"delta must be in (0, 1], got {delta}")
    longer = max(1, round(delta * size))
    if width >= height:
        return longer, max(1, round(height * longer / width))
    return max(1, round(width * longer / height)), longer


def graft_box(street_wh: tuple[int, int], delta: float, size: int, corner: str = "upper_right") -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pasted street view in the output: the region where M = 0."""
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
    w, h = street_view_size(*street_wh, delta, size)
    x0 = size - w if corner.endswith("right") else 0
    y0 = 0 if corner.startswith("upper") else size - h
    return x0, y0, x0 + w, y0 + h


def reserved_fraction(street_wh: tuple[int, int], delta: float, corner: str = "upper_right") -> tuple[float, ...]:
    """The graft box as fractions of the side: pass it to the crop step to keep street names out from under it."""
    scale = 10_000
    return tuple(v / scale for v in graft_box(street_wh, delta, scale, corner))


@contextmanager
def _decoding(path: Path):
    """Turn whatever Pillow raises for a missing or corrupt file into a ``GraftError`` naming it."""
    try:
        yield
    except FileNotFoundError:
        raise GraftError(f"{path}: not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise GraftError(f"{path}: cannot decode image ({exc})") from None


EXIF_ORIENTATION = 0x0112


def _turned(im: Image.Image) -> bool:
    """Whether the EXIF orientation shows the stored pixels turned by 90 degrees (a phone held upright)."""
    return im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)


def _as_shown(im: Image.Image) -> Image.Image:
    """RGB as a viewer shows the file: EXIF orientation applied, transparency over white (not the colour the
    transparent pixels happen to hold)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    return im.convert("RGB")


def _open_image(path: Path, target: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` as shown (``_as_shown``); with ``target``, JPEGs are decoded at the smallest DCT scale still
    >= target."""
    with _decoding(path):
        im = Image.open(path)
        if target is not None:
            im.draft("RGB", target[::-1] if _turned(im) else target)  # no-op for non-JPEG
        return _as_shown(im)


def _open_street_view(path: Path, delta: float, size: int, corner: str) -> tuple[Image.Image, tuple[int, int]]:
    """The street view decoded (draft mode) and resized for pasting, with its paste position."""
    with _decoding(path):
        im = Image.open(path)  # reads the header only: the size is known before decoding
        turned = _turned(im)
        x0, y0, x1, y1 = graft_box(im.size[::-1] if turned else im.size, delta, size, corner)
        target = (x1 - x0, y1 - y0)
        im.draft("RGB", target[::-1] if turned else target)
        return _resized(_as_shown(im), target), (x0, y0)


def _resized(im: Image.Image, wh: tuple[int, int]) -> Image.Image:
    return im if im.size == wh else im.resize(wh, Image.Resampling.BICUBIC, reducing_gap=2.0)


def graft(satellite: Image.Image, street_view: Image.Image, delta: float = 0.5, size: int = 336,
          corner: str = "upper_right") -> Image.Image:
    """The grafted image I_s (a new image; the inputs are not modified)."""
    x0, y0, x1, y1 = graft_box(street_view.size, delta, size, corner)
    out = _resized(satellite.convert("RGB"), (size, size)).copy()
    out.paste(_resized(street_view.convert("RGB"), (x1 - x0, y1 - y0)), (x0, y0))
    return out


def stitch(satellite: Image.Image, street_view: Image.Image, size: int = 336) -> Image.Image:
    """Table 1's "two images stitched": satellite left, street view right at the same height, padded square."""
    side = max(satellite.height, street_view.height)
    sat = _resized(satellite.convert("RGB"), (side, side))
    sv = _resized(street_view.convert("RGB"), (max(1, round(street_view.width * side / street_view.height)), side))
    width = side + sv.width
    canvas = Image.new("RGB", (max(width, side), max(width, side)), PAD_COLOR)
    top = (canvas.height - side) // 2
    canvas.paste(sat, (0, top))
    canvas.paste(sv, (side, top))
    return _resized(canvas, (size, size))


def separate(satellite: Image.Image, street_view: Image.Image, size: int = 336) -> tuple[Image.Image, Image.Image]:
    """Table 1's "two images input separately": each a ``size`` square (the street view padded, not cropped)."""
    sv = street_view.convert("RGB")
    side = max(sv.size)
    square = Image.new("RGB", (side, side), PAD_COLOR)
    square.paste(sv, ((side - sv.width) // 2, (side - sv.height) // 2))
    return _resized(satellite.convert("RGB"), (size, size)), _resized(square, (size, size))


@dataclass(frozen=True)
class GraftPair:
    satellite: Path
    street_view: Path
    out: str  # relative to the output folder


def output_stem(out: str) -> str:
    """A pair's output name without its suffix, which every variant replaces by its own (``x.png`` is written as
    ``x.jpg``, or ``x.satellite.jpg`` and ``x.street.jpg``): two outputs with one stem would be one file."""
    return str(PurePosixPath(out).with_suffix(""))


def output_files(out_dir: Path, out: str, variant: str) -> list[Path]:
    """The file(s) a pair produces: one image, or two for the "separate" variant."""
    stem = out_dir / output_stem(out)
    return [stem.with_name(stem.name + s) for s in (SEPARATE_SUFFIXES if variant == "separate" else (".jpg",))]


def _complete_jpeg(path: Path) -> bool:
    """An output a rerun may keep: a JPEG that ends with its end-of-image marker (not an empty or cut-off file)."""
    try:
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            return f.read(2) == b"\xff\xd9"
    except OSError:  # missing, or shorter than two bytes
        return False


def _save_atomic(image: Image.Image, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise


class _SatelliteCache:
    """The last decoded satellite crop: pairs arrive grouped by crop, so views of one location share a decode."""

    def __init__(self):
        self.path, self.image = None, None

    def get(self, path: Path, size: int) -> Image.Image:
        if path != self.path:
            self.image = _resized(_open_image(path, (size, size)), (size, size))
            self.path = path
        return self.image


def _graft_one(pair: GraftPair, out_dir: Path, variant: str, delta: float, size: int, corner: str,
               quality: int, cache: _SatelliteCache) -> None:
    sat = cache.get(pair.satellite, size)
    targets = output_files(out_dir, pair.out, variant)
    if variant == "grafted":
        sv, position = _open_street_view(pair.street_view, delta, size, corner)
        out = sat.copy()
        out.paste(sv, position)
        _save_atomic(out, targets[0], quality)
    elif variant == "stitched":
        _save_atomic(stitch(sat, _open_image(pair.street_view), size), targets[0], quality)
    else:
        for image, target in zip(separate(sat, _open_image(pair.street_view), size), targets):
            _save_atomic(image, target, quality)


def _graft_chunk(pairs: list[GraftPair], out_dir: Path, variant: str, delta: float, size: int, corner: str,
                 quality: int) -> list[tuple[GraftPair, str | None]]:
    """Graft a chunk; returns each pair with ``None`` or the error that names the bad file."""
    cache = _SatelliteCache()
    results = []
    for pair in pairs:
        try:
            _graft_one(pair, out_dir, variant, delta, size, corner, quality, cache)
            results.append((pair, None))
        except GraftError as exc:
            results.append((pair, str(exc)))
    return results


def check_settings(delta: float, size: int, quality: int = JPEG_QUALITY) -> None:
    """The grafting settings, checked before any image is read (``ValueError`` naming the bad one)."""
    if not 0 < delta <= 1:
        raise ValueError(f"delta must be in (0, 1], not {delta}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, not {size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1-100, not {quality}")


def graft_file(satellite, street_view, out, delta: float = 0.5, size: int = 336, corner: str = "upper_right",
               variant: str = "grafted", quality: int = JPEG_QUALITY) -> list[Path]:
    """Single pair: write the output image(s) for ``variant``; raises ``GraftError`` naming a bad input. Outputs
    are JPEGs: an ``out`` with another extension is refused rather than silently renamed."""
    out = Path(out)
    check_settings(delta, size, quality)
    if out.suffix.lower() not in (".jpg", ".jpeg"):
        raise ValueError(f"--out {out}: grafts are written as JPEG; give a .jpg name")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"--out {out}: {out.parent} is a file, not a folder")
    for target in output_files(out.parent, out.name, variant):
        refuse_output_over_inputs(target, [("--satellite", satellite), ("--street-view", street_view)], "--out")
    pair = GraftPair(Path(satellite), Path(street_view), out.name)
    _graft_one(pair, out.parent, variant, delta, size, corner, quality, _SatelliteCache())
    return output_files(out.parent, out.name, variant)


@dataclass
class GraftReport:
    written: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (output name, reason naming the bad file)

    def summary(self) -> str:
        lines = [f"grafts: {self.written} written, {self.already_done} already done, {len(self.failed)} failed"]
        lines += [f"  failed {out}: {why}" for out, why in self.failed]
        return "\n".join(lines)


def read_graft_manifest(path) -> list[GraftPair]:
    """A JSONL manifest, one ``{"satellite", "street_view", "out"}`` per line; relative paths are from its folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "graft manifest not found")
    base = path.parent
    pairs, seen = [], {}
    for line, rec in read_jsonl(path, ("satellite", "street_view", "out")):
        try:
            rec["out"] = path_inside_root(rec["out"], "out")
        except ValueError as exc:
            raise DataError(path, line, f"{exc} (outputs go inside --out-dir)") from None
        stem = output_stem(rec["out"])
        if stem in seen:
            first_line, first = seen[stem]
            also = "" if first == rec["out"] else f" (as {first!r}: outputs are JPEGs, written as {stem}.jpg)"
            raise DataError(path, line, f"output {rec['out']!r} already on line {first_line}{also}")
        seen[stem] = (line, rec["out"])
        pairs.append(GraftPair(base / rec["satellite"], base / rec["street_view"], rec["out"]))
    return pairs


def grafted_name(image: str) -> str:
    """Where a street view's grafted image goes, relative to the grafted folder: its own relative path, as a JPEG.
    A view that is not a ``.jpg`` keeps its suffix in the name (``x.png`` -> ``x.png.jpg``), so ``x.jpg`` and
    ``x.png`` of one location never share an output."""
    return image if PurePosixPath(image).suffix == ".jpg" else f"{image}.jpg"


def city_pairs(city_root, crops_dir, splits: tuple[str, ...] | None = ("train",)) -> list[GraftPair]:
    """Every street view of ``locations.csv`` (in ``splits`` when the table has a split column) with its crop."""
    city_root = Path(city_root)
    rows = select_rows(read_locations(city_root / "locations.csv"), splits)
    index = read_crop_index(crops_dir)
    pairs = []
    for row in rows:
        crop = index.get(row.location_id)
        # A location without a crop (outside the raster) is still paired: batch grafting reports it by name.
        satellite = Path(crops_dir) / (crop["file"] if crop else f"<no crop for location {row.location_id}>")
        pairs.append(GraftPair(satellite, city_root / row.image, grafted_name(row.image)))
    return pairs


def parse_splits(text: str) -> tuple[str, ...] | None:
    """The ``--splits`` option of the stage-1 tools: ``all`` (None) or comma-separated names of train, val, test."""
    if text.strip() == "all":
        return None
    splits = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in splits if s not in ("train", "val", "test")]
    if not splits or unknown:
        raise ValueError(f"splits must be 'all' or names among train, val, test, not {text!r}")
    return splits


def select_rows(rows, splits: tuple[str, ...] | None):
    """Rows in ``splits`` (``None``: every row). Asking for splits of a table that has none is an error: stage 1
    would otherwise train on the street views of the test locations."""
    if splits is None:
        return rows
    if not any(r.split for r in rows):
        raise ValueError("locations.csv has no split column, so stage 1 cannot keep to the training locations: "
                         "pin the splits first (python datasets_prep/split_locations.py --locations ...), or pass "
                         "--splits all to use every row on purpose")
    return [r for r in rows if r.split in splits]


def _refuse_links_out_of(out_dir: Path, pairs: list[GraftPair], variant: str) -> None:
    """Outputs are confined to ``out_dir`` by their names (``records.path_inside_root``) and, here, by where their
    folders are once symbolic links are followed: ``lnk/x.jpg`` with ``lnk -> /elsewhere`` would write elsewhere."""
    root = out_dir.resolve()
    checked: set[Path] = set()
    for pair in pairs:
        for target in output_files(out_dir, pair.out, variant):
            if target.parent in checked:
                continue
            checked.add(target.parent)
            if not target.parent.resolve().is_relative_to(root):
                raise ValueError(f"output {pair.out!r} would be written to {target.parent.resolve()}, outside the "
                                 f"output folder {out_dir}: {target.parent} goes there through a symbolic link")


def graft_batch(manifest_or_pairs, out_dir, delta: float = 0.5, size: int = 336, workers: int | None = None, *,
                variant: str = "grafted", corner: str = "upper_right", quality: int = JPEG_QUALITY,
                progress: bool = True) -> GraftReport:
    """Graft many pairs into ``out_dir``; outputs that exist are kept (resumable), failures are reported by file.

    ``manifest_or_pairs`` is a JSONL manifest path (``read_graft_manifest``) or a list of ``GraftPair``.
    Outputs are written through a temporary file and a rename, so an interrupted run leaves no half image.
    """
    from tqdm import tqdm

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    check_settings(delta, size, quality)
    graft_box((4, 3), delta, size, corner)  # validate the corner before any work
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"output folder {out_dir} is a file")
    pairs = read_graft_manifest(manifest_or_pairs) if isinstance(manifest_or_pairs, (str, os.PathLike)) \
        else list(manifest_or_pairs)
    out_dir = Path(out_dir)

    check_run_params(out_dir, {"variant": variant, "delta": delta, "size": size, "corner": corner, "quality": quality})
    _refuse_links_out_of(out_dir, pairs, variant)
    for stale in out_dir.rglob(".*.tmp"):  # half-written by a run that was killed (see _save_atomic)
        stale.unlink()
    report = GraftReport()
    todo = [p for p in pairs if not all(_complete_jpeg(f) for f in output_files(out_dir, p.out, variant))]
    report.already_done = len(pairs) - len(todo)
    todo.sort(key=lambda p: str(p.satellite))
    chunks = []
    for _, group in groupby(todo, key=lambda p: p.satellite):
        group = list(group)
        if chunks and len(chunks[-1]) + len(group) <= CHUNK:
            chunks[-1].extend(group)
        else:
            chunks.append(group)
    workers = max(1, min(workers or default_workers(), len(chunks) or 1))
    args = (out_dir, variant, delta, size, corner, quality)
    with tqdm(total=len(todo), desc=f"{variant} images", unit="img", disable=not progress) as bar:
        def collect(results):
            for pair, error in results:
                if error is None:
                    report.written += 1
                else:
                    report.failed.append((pair.out, error))
            bar.update(len(results))

        if workers == 1:
            for chunk in chunks:
                collect(_graft_chunk(chunk, *args))
        else:
            with worker_pool(workers) as pool:
                for future in as_completed([pool.submit(_graft_chunk, chunk, *args) for chunk in chunks]):
                    collect(future.result())
    return report
