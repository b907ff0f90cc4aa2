"""Renderers for the demo city: a pseudo-aerial photo from OSM layers, and street views from scene descriptions.

Neither draws a map: the aerial image has no text or outlines (the stage-1 crop tool draws street names itself), and
street views look at facades, signs and the road. The street views carry two kinds of cues:
- real OSM attributes where they exist: the street's name on its sign, house numbers, shop and amenity names, tram
  tracks, building levels (facade height), park edges and street trees;
- large, low-frequency codes keyed to the labels, so a tiny vision tower at 56 px can learn them in minutes: a sign
  plate and a pavement colour per street, a facade palette and window style per district.
The aerial photo shows the same scene from above, so two of those codes are on it too: each demo street's pavements
in its pavement colour, and each district's roofs in a palette drawn from its facades. They are what a cross-view
retriever can match between a street view and a tile (docs/retrieval.md).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Saturated colours for street sign codes: outer frame and inner plate.
SIGN_COLOURS = (
    (215, 40, 40), (245, 140, 20), (240, 215, 40), (40, 165, 60), (30, 185, 205),
    (40, 75, 215), (150, 60, 200), (230, 60, 165), (245, 245, 245), (25, 25, 25),
)
# Second-colour offsets tried in turn: (a, a+3), then (a, a+7), ... never the same pair twice.
_CODE_OFFSETS = (3, 7, 1, 9, 5, 2, 8, 4, 6)
# Facade colour, trim colour and window style per district (styles: 0 square, 1 arched, 2 paired).
DISTRICT_STYLES = (
    ((214, 170, 80), (250, 240, 215), 0),
    ((165, 70, 52), (235, 225, 205), 1),
    ((128, 168, 212), (245, 245, 250), 2),
    ((112, 158, 104), (240, 235, 220), 0),
    ((222, 150, 172), (120, 60, 80), 1),
    ((120, 112, 150), (230, 225, 240), 2),
    ((232, 220, 186), (110, 90, 60), 2),
    ((58, 128, 128), (230, 240, 235), 1),
)
SKY = (150, 190, 225)
ASPHALT = (78, 78, 82)
# The words a person would use for the colours above, as the street views show them: a street's pavement (its sign's
# frame colour weathered towards grey) and a district's facades and windows. The demo city writes them into its
# view facts (docs/demo_city.md), from which the retrieval data's rule backend writes scene texts.
PAVING_WORDS = ("reddish", "orange-tinted", "yellowish", "greenish", "turquoise", "bluish", "purplish", "pinkish",
                "pale grey", "dark grey")
FACADE_WORDS = ("ochre", "brick-red", "light blue", "sage green", "pink", "lavender", "cream", "teal")
WINDOW_WORDS = ("square", "arched", "paired")
# Carriageway width in metres by OSM highway class, as the aerial draws it (3 m for footways and the rest).
ROAD_WIDTHS_M = {"primary": 16, "secondary": 14, "tertiary": 12, "residential": 9, "unclassified": 9,
                 "living_street": 7, "pedestrian": 8, "service": 5}
PATH_WIDTH_M = 3


def street_colour_code(index: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The (frame, plate) colours of the ``index``-th street's sign; distinct for up to 90 streets."""
    n = len(SIGN_COLOURS)
    if index >= n * len(_CODE_OFFSETS):
        raise ValueError(f"only {n * len(_CODE_OFFSETS)} street colour codes exist; got index {index}")
    first = index % n
    return SIGN_COLOURS[first], SIGN_COLOURS[(first + _CODE_OFFSETS[index // n]) % n]


def district_style(index: int):
    return DISTRICT_STYLES[index % len(DISTRICT_STYLES)]


def street_paving(index: int) -> tuple[int, int, int]:
    """The ``index``-th street's pavement colour, seen in its street views and from above."""
    return _mix(street_colour_code(index)[0], (150, 150, 150), 0.55)


def street_paving_words(index: int) -> str:
    return PAVING_WORDS[SIGN_COLOURS.index(street_colour_code(index)[0])]


def district_words(index: int) -> tuple[str, str]:
    """(facade colour, window style) of the ``index``-th district, in words."""
    return FACADE_WORDS[index % len(DISTRICT_STYLES)], WINDOW_WORDS[district_style(index)[2]]


def road_width_m(highway: str) -> int:
    return ROAD_WIDTHS_M.get(highway, PATH_WIDTH_M)


def district_roof(index: int) -> tuple[int, int, int]:
    """The roof colour of the ``index``-th district: its facade colour, weathered towards grey."""
    return _mix(district_style(index)[0], (118, 116, 110), 0.4)


@lru_cache(maxsize=None)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib (covers a, o and a-ring; Pillow's default font does not)."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), max(4, size))


def _fit_font(draw: ImageDraw.ImageDraw, text: str, width: float, height: float, bold: bool = True):
    size = max(4, int(height))
    while size > 4:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font(size, bold))
        if right - left <= width and bottom - top <= height:
            break
        size -= 1
    return font(size, bold)


def _text_centred(draw, box, text, fill, bold=True) -> None:
    x0, y0, x1, y1 = box
    f = _fit_font(draw, text, x1 - x0 - 2, y1 - y0 - 1, bold)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    draw.text(((x0 + x1 - (right - left)) / 2 - left, (y0 + y1 - (bottom - top)) / 2 - top), text, font=f, fill=fill)


def _shade(colour, factor: float):
    return tuple(int(max(0, min(255, c * factor))) for c in colour)


def _mix(a, b, t: float):
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


def _ink_for(background) -> tuple[int, int, int]:
    r, g, b = background
    return (20, 20, 20) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (250, 250, 250)


def _name_colour(name: str):
    """A stable awning colour for a shop name (crc32, not hash(): hash() changes between runs)."""
    return SIGN_COLOURS[zlib.crc32(name.encode("utf-8")) % 8]


# ============================================================================================ street views
@dataclass(frozen=True)
class StreetScene:
    """What one street-view image shows; built from OSM by ``addressvlm.demo.city``."""

    street: str
    street_index: int  # selects the sign's colour code
    district_index: int  # selects the facade palette
    view: str  # "along": looking down the street; "across": facing the buildings
    levels: tuple[int, ...]  # facade heights: (left, right) for along views, (front,) for across views
    park: tuple[bool, ...]  # same sides as levels: a park instead of a facade
    house_numbers: tuple[str, ...]
    shops: tuple[str, ...]
    tram: bool
    trees: int


def render_street_view(scene: StreetScene, size: tuple[int, int], rng: np.random.Generator,
                       attribution: str) -> Image.Image:
    """Draw one view; ``rng`` varies lighting, layout jitter and noise, so views of one place differ."""
    width, height = size
    strip = max(8, height // 13)
    content_h = height - strip
    img = Image.new("RGB", (width, content_h), SKY)
    draw = ImageDraw.Draw(img)
    facade, trim, window_style = district_style(scene.district_index)
    frame_colour, plate_colour = street_colour_code(scene.street_index)
    paving = street_paving(scene.street_index)
    draw.rectangle((0, 0, width, content_h * 0.25), fill=_mix(SKY, (205, 225, 240), rng.uniform(0, 0.6)))
    if scene.view == "along":
        _draw_along(draw, scene, width, content_h, rng, facade, trim, window_style, paving)
    else:
        _draw_across(draw, scene, width, content_h, rng, facade, trim, window_style, paving)
    _draw_sign(draw, scene.street, frame_colour, plate_colour, width, content_h, rng)

    pixels = np.asarray(img, dtype=np.float32)
    pixels = pixels * rng.uniform(0.82, 1.12) + rng.normal(0, 3.5, pixels.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.4))
    out = Image.new("RGB", (width, height), (20, 20, 20))
    out.paste(img, (0, 0))
    _text_centred(ImageDraw.Draw(out), (1, content_h, width - 1, height), attribution, (235, 235, 235), bold=False)
    return out


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _draw_along(draw, scene, w, h, rng, facade, trim, window_style, paving) -> None:
    horizon = h * rng.uniform(0.42, 0.5)
    vx = w * rng.uniform(0.42, 0.58)
    per_level = h * 0.075
    draw.rectangle((0, horizon, w, h), fill=paving)
    road = [(w * 0.16, h), (w * 0.84, h), (vx + w * 0.05, horizon + h * 0.03), (vx - w * 0.05, horizon + h * 0.03)]
    draw.polygon(road, fill=ASPHALT)
    draw.line([(vx, horizon + h * 0.03), (w * 0.5, h)], fill=(200, 200, 190), width=1)
    if scene.tram:
        for offset in (-0.2, -0.1, 0.1, 0.2):
            draw.line([(w * (0.5 + offset), h), (vx + offset * w * 0.12, horizon + h * 0.03)], fill=(175, 175, 180), width=1)
        draw.line([(0, h * 0.12), (vx, horizon - h * 0.12)], fill=(40, 40, 40), width=1)
        draw.line([(w, h * 0.12), (vx, horizon - h * 0.12)], fill=(40, 40, 40), width=1)
    far_top = horizon - h * 0.14
    far_bottom = horizon + h * 0.03
    draw.rectangle((vx - w * 0.07, far_top, vx + w * 0.07, far_bottom), fill=_shade(facade, 0.8))
    for side, levels, park in zip((-1, 1), scene.levels, scene.park):
        near_x = 0 if side < 0 else w
        far_x = vx + side * w * 0.07
        top_near = max(-h * 0.2, horizon - levels * per_level * 1.15)
        bottom_near = h * rng.uniform(0.8, 0.86)
        if park:
            _draw_park_side(draw, near_x, far_x, horizon, bottom_near, far_bottom, h, rng)
            continue
        quad = dict(near_x=near_x, far_x=far_x, top_near=top_near, top_far=far_top + h * 0.02,
                    bottom_near=bottom_near, bottom_far=far_bottom)
        shade = 1.0 if side < 0 else 0.82  # sun from the left
        draw.polygon(_quad_points(quad, 0, 1, 0, 1), fill=_shade(facade, shade))
        draw.polygon(_quad_points(quad, 0, 1, 0, 0.04), fill=_shade(trim, shade))
        rows = max(1, min(levels, 8))
        for r in range(rows - 1):
            v0 = 0.08 + r * 0.86 / rows
            for c in range(6):
                u0 = 0.05 + c * 0.16
                _window(draw, quad, u0, u0 + 0.08, v0, v0 + 0.5 / rows, window_style, trim, shade)
        ground_v = 0.08 + (rows - 1) * 0.86 / rows
        draw.polygon(_quad_points(quad, 0.02, 0.6, ground_v, 0.98), fill=_shade((60, 55, 50), shade))
    _draw_labels_along(draw, scene, w, h, horizon)
    for i in range(min(scene.trees, 3)):
        depth = rng.uniform(0.2, 0.8)
        side = -1 if rng.random() < 0.5 else 1
        x = _lerp(w * 0.5 + side * w * 0.42, vx + side * w * 0.06, depth)
        y = _lerp(h * 0.9, horizon + h * 0.03, depth)
        _tree(draw, x, y, _lerp(h * 0.16, h * 0.05, depth))


def _quad_points(q, u0, u1, v0, v1):
    """Corners of the (u, v) patch of a perspective facade: u from near (0) to far (1), v from top (0) to bottom (1)."""
    def at(u, v):
        x = _lerp(q["near_x"], q["far_x"], u)
        top = _lerp(q["top_near"], q["top_far"], u)
        bottom = _lerp(q["bottom_near"], q["bottom_far"], u)
        return (x, _lerp(top, bottom, v))
    return [at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)]


def _window(draw, q, u0, u1, v0, v1, style, trim, shade) -> None:
    glass = _shade((45, 60, 80), shade)
    if style == 2:  # paired narrow panes
        mid = (u0 + u1) / 2
        draw.polygon(_quad_points(q, u0, mid - 0.01, v0, v1), fill=glass)
        draw.polygon(_quad_points(q, mid + 0.01, u1, v0, v1), fill=glass)
    else:
        draw.polygon(_quad_points(q, u0, u1, v0, v1), fill=glass, outline=_shade(trim, shade))
        if style == 1:  # arched: a trim cap over the pane
            draw.polygon(_quad_points(q, u0 - 0.01, u1 + 0.01, v0 - 0.04, v0), fill=_shade(trim, shade))


def _draw_park_side(draw, near_x, far_x, horizon, bottom_near, far_bottom, h, rng) -> None:
    grass = [(near_x, bottom_near), (far_x, far_bottom), (far_x, horizon), (near_x, horizon)]
    draw.polygon([(near_x, h), (far_x, far_bottom), (near_x, far_bottom)], fill=(86, 140, 62))
    draw.polygon(grass, fill=(120, 170, 200))
    for i in range(5):
        t = i / 5 + rng.uniform(0, 0.1)
        x = _lerp(near_x, far_x, t) + (12 if near_x == 0 else -12) * (1 - t)
        _tree(draw, x, _lerp(bottom_near, far_bottom, t), _lerp(h * 0.45, h * 0.12, t))
    draw.line([(near_x, bottom_near), (far_x, far_bottom)], fill=(40, 40, 35), width=2)  # park fence


def _tree(draw, x, base_y, crown) -> None:
    draw.rectangle((x - crown * 0.08, base_y - crown * 0.9, x + crown * 0.08, base_y), fill=(70, 50, 35))
    draw.ellipse((x - crown * 0.55, base_y - crown * 1.7, x + crown * 0.55, base_y - crown * 0.6), fill=(46, 100, 44))
    draw.ellipse((x - crown * 0.3, base_y - crown * 1.6, x + crown * 0.2, base_y - crown * 1.1), fill=(70, 130, 60))


def _draw_labels_along(draw, scene, w, h, horizon) -> None:
    if scene.shops:
        colour = _name_colour(scene.shops[0])
        box = (2, horizon + h * 0.08, w * 0.3, horizon + h * 0.17)
        draw.rectangle(box, fill=colour)
        _text_centred(draw, box, scene.shops[0], _ink_for(colour))
    if scene.house_numbers:
        _house_number(draw, w * 0.31, horizon + h * 0.08, scene.house_numbers[0], h)


def _house_number(draw, x, y, number, h) -> None:
    box = (x, y, x + h * 0.15, y + h * 0.09)
    draw.rectangle(box, fill=(25, 45, 120), outline=(240, 240, 240))
    _text_centred(draw, box, number, (250, 250, 250))


def _draw_across(draw, scene, w, h, rng, facade, trim, window_style, paving) -> None:
    bottom = h * rng.uniform(0.7, 0.76)
    draw.rectangle((0, bottom, w, h * 0.8), fill=paving)
    draw.rectangle((0, h * 0.8, w, h), fill=ASPHALT)
    draw.line([(0, h * 0.9), (w, h * 0.9)], fill=(200, 200, 190), width=1)
    if scene.tram:
        for y in (0.84, 0.87, 0.93, 0.96):
            draw.line([(0, h * y), (w, h * y)], fill=(175, 175, 180), width=1)
        draw.line([(0, h * 0.06), (w, h * 0.08)], fill=(40, 40, 40), width=1)
    if scene.park[0]:
        draw.rectangle((0, h * 0.45, w, bottom), fill=(86, 140, 62))
        for i in range(6):
            _tree(draw, w * (i + rng.uniform(0.2, 0.8)) / 6, bottom - h * rng.uniform(0.0, 0.12), h * rng.uniform(0.25, 0.4))
        for x in range(0, w, 6):
            draw.line([(x, bottom - h * 0.06), (x, bottom)], fill=(40, 40, 35), width=1)
        draw.line([(0, bottom - h * 0.05), (w, bottom - h * 0.05)], fill=(40, 40, 35), width=1)
        return
    levels = scene.levels[0]
    top = max(-h * 0.05, bottom - levels * h * 0.115)
    seam = w * rng.uniform(0.55, 0.85)
    for x0, x1, tint in ((0, seam, 1.0), (seam, w, rng.uniform(0.88, 1.08))):
        colour = _shade(facade, tint)
        draw.rectangle((x0, top, x1, bottom), fill=colour)
        draw.rectangle((x0, top, x1, top + h * 0.03), fill=trim)
        floor_h = (bottom - top) / max(levels, 1)
        cols = max(1, int((x1 - x0) / (w * 0.13)))
        for r in range(levels - 1):
            y0 = top + h * 0.03 + r * floor_h + floor_h * 0.2
            for c in range(cols):
                cx = x0 + (c + 0.5) * (x1 - x0) / cols
                _window_front(draw, cx, y0, w * 0.035, floor_h * 0.55, window_style, trim)
    ground_top = bottom - (bottom - top) / max(levels, 1)
    draw.rectangle((w * 0.44, ground_top + (bottom - ground_top) * 0.2, w * 0.52, bottom), fill=(55, 40, 30))  # door
    for x0 in (w * 0.06, w * 0.6):
        draw.rectangle((x0, ground_top + (bottom - ground_top) * 0.35, x0 + w * 0.3, bottom - 2), fill=(45, 60, 80))
    for i, name in enumerate(scene.shops[:2]):
        colour = _name_colour(name)
        x0 = w * (0.04 + 0.56 * i)
        box = (x0, ground_top, x0 + w * 0.36, ground_top + h * 0.09)
        draw.rectangle(box, fill=colour)
        _text_centred(draw, box, name, _ink_for(colour))
    for i, number in enumerate(scene.house_numbers[:2]):
        _house_number(draw, w * (0.53 if i == 0 else 0.28), ground_top + h * 0.1, number, h)


def _window_front(draw, cx, y0, half_w, height, style, trim) -> None:
    glass = (45, 60, 80)
    if style == 2:
        draw.rectangle((cx - half_w, y0, cx - 1, y0 + height), fill=glass)
        draw.rectangle((cx + 1, y0, cx + half_w, y0 + height), fill=glass)
    else:
        draw.rectangle((cx - half_w, y0, cx + half_w, y0 + height), fill=glass, outline=trim)
        if style == 1:
            draw.pieslice((cx - half_w, y0 - half_w, cx + half_w, y0 + half_w), 180, 360, fill=trim)


def _draw_sign(draw, name, frame_colour, plate_colour, w, h, rng) -> None:
    """A street-name plate on a pole: the frame/plate colours are the street's code, the text its real name."""
    plate_w, plate_h = w * rng.uniform(0.44, 0.5), h * rng.uniform(0.2, 0.24)
    left_side = rng.random() < 0.5
    x0 = w * rng.uniform(0.02, 0.08) if left_side else w * rng.uniform(0.92, 0.98) - plate_w
    y0 = h * rng.uniform(0.06, 0.16)
    pole_x = x0 + plate_w * (0.15 if left_side else 0.85)
    draw.rectangle((pole_x - 1, y0, pole_x + 1, h * 0.9), fill=(90, 90, 95))
    border = max(2, int(plate_h * 0.2))
    draw.rectangle((x0, y0, x0 + plate_w, y0 + plate_h), fill=frame_colour)
    inner = (x0 + border, y0 + border, x0 + plate_w - border, y0 + plate_h - border)
    draw.rectangle(inner, fill=plate_colour)
    _text_centred(draw, inner, name, _ink_for(plate_colour))


# ============================================================================================ aerial image
COURTYARD = (150, 146, 138)
ROOF_COLOURS = ((96, 96, 100), (124, 122, 116), (100, 126, 114), (140, 98, 82), (72, 72, 76), (156, 152, 144))


def render_satellite(city, metres_per_pixel: float, seed: int, extent=None,
                     street_index: dict[str, int] | None = None,
                     district_index: dict[str, int] | None = None) -> np.ndarray:
    """An RGB (H, W, 3) uint8 pseudo-aerial photo of ``extent`` (default ``city.bounds``; xmin, ymin, xmax, ymax in
    the city's projected metres), north up, one pixel = ``metres_per_pixel``. The streets of ``street_index`` get
    their pavement colour and the buildings in a district of ``district_index`` its roof colour, the indexes the
    street views were drawn with; everything else is grey pavement and a mix of roofs."""
    from shapely.prepared import prep

    street_index, district_index = street_index or {}, district_index or {}
    districts = [(prep(city.districts[name]), district_roof(i)) for name, i in district_index.items()]

    def roof_colour(building) -> tuple[int, int, int]:
        centre = building.polygon.representative_point()
        return next((roof for area, roof in districts if area.contains(centre)),
                    ROOF_COLOURS[building.osm_id % len(ROOF_COLOURS)])
    xmin, ymin, xmax, ymax = extent or city.bounds
    width = int(round((xmax - xmin) / metres_per_pixel))
    height = int(round((ymax - ymin) / metres_per_pixel))
    ss = 2  # supersampling for smooth edges
    scale = ss / metres_per_pixel

    def px(geom_coords):
        return [((x - xmin) * scale, (ymax - y) * scale) for x, y in geom_coords]

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width * ss, height * ss), (128, 124, 116))
    draw = ImageDraw.Draw(img)
    for poly in city.paved:
        _fill_polygon(draw, poly, px, (168, 164, 156))
    for poly in city.green:
        _fill_polygon(draw, poly, px, (82, 118, 60))
    for poly in city.water:
        _fill_polygon(draw, poly, px, (38, 62, 72))
    streets = sorted(city.streets, key=lambda s: road_width_m(s.highway))

    def metres(street) -> int:
        return road_width_m(street.highway)

    def is_path(street) -> bool:
        return metres(street) <= PATH_WIDTH_M or street.highway == "pedestrian"

    paths = [s for s in streets if is_path(s)]
    roads = [s for s in streets if not is_path(s)]
    # Grey kerbs and pavements, the footways (often mapped along the kerb), then the coded streets' pavements over
    # both, and the carriageways last.
    for street in roads:
        if metres(street) >= 9 and street.name not in street_index:
            draw.line(px(street.line.coords), fill=(146, 143, 136), width=int((metres(street) + 6) * scale),
                      joint="curve")
    for street in paths:
        draw.line(px(street.line.coords), fill=(150, 146, 138), width=max(1, int(metres(street) * scale)),
                  joint="curve")
    for street in roads:
        if street.name in street_index:
            draw.line(px(street.line.coords), fill=street_paving(street_index[street.name]),
                      width=int((max(metres(street), 7) + 6) * scale), joint="curve")
    for street in roads:
        draw.line(px(street.line.coords), fill=(70, 70, 72), width=max(1, int(metres(street) * scale)),
                  joint="curve")
    for line in city.rail:
        draw.line(px(line.coords), fill=(112, 98, 86), width=max(1, int(6 * scale)))
    for line in city.tram:
        draw.line(px(line.coords), fill=(48, 46, 44), width=max(1, int(0.6 * scale)))
    sun = np.array([1.0, -1.0]) / np.sqrt(2)  # shadows fall to the north-east: the sun is in the south-west
    for building in city.buildings:
        shift = building.levels * 3.2 * 0.45 * scale
        shadow = [(x + sun[0] * shift, y + sun[1] * shift) for x, y in px(building.polygon.exterior.coords)]
        draw.polygon(shadow, fill=(52, 52, 54))
    for building in city.buildings:
        roof = _shade(roof_colour(building), rng.uniform(0.88, 1.1))
        _fill_polygon(draw, building.polygon, px, roof, hole_fill=COURTYARD)
        draw.line(px(building.polygon.exterior.coords), fill=_shade(roof, 1.2), width=max(1, ss))
        _fill_polygon(draw, building.polygon.buffer(-1.5), px, _shade(roof, 0.92), hole_fill=COURTYARD)  # the roof inside its parapet
    for tree in city.trees:
        x, y = px([(tree.x, tree.y)])[0]
        r = rng.uniform(2.5, 4.5) * scale
        draw.ellipse((x - r + r * 0.5, y - r - r * 0.5, x + r + r * 0.5, y + r - r * 0.5), fill=(45, 55, 40))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(50, 92, 44))
        draw.ellipse((x - r * 0.6, y - r * 0.7, x + r * 0.2, y + r * 0.1), fill=(72, 118, 58))
    img = img.resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(img, dtype=np.float32)
    # Large-scale tone changes (as across an aerial mosaic) and fine sensor noise.
    coarse = rng.normal(0, 6, (max(2, height // 64), max(2, width // 64), 3)).astype(np.float32)
    coarse = np.asarray(Image.fromarray(coarse[..., 0]).resize((width, height), Image.Resampling.BICUBIC))[..., None]
    pixels = pixels + coarse + rng.normal(0, 5, pixels.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    return np.asarray(img)


def _fill_polygon(draw, poly, px, colour, hole_fill=None) -> None:
    for part in getattr(poly, "geoms", [poly]):
        if part.geom_type != "Polygon" or part.is_empty:
            continue
        draw.polygon(px(part.exterior.coords), fill=colour)
        if hole_fill is not None:
            for ring in part.interiors:
                draw.polygon(px(ring.coords), fill=hole_fill)
