"""Grafting: geometry over deltas, aspect ratios and corners; pixels; variants; batch resume and bad inputs."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from addressvlm.data.graft import (GraftError, GraftPair, graft, graft_batch, graft_box, graft_file,
                                   read_graft_manifest, separate, stitch, street_view_size)
from addressvlm.core.records import DataError

ROOT = Path(__file__).resolve().parents[1]


def solid(size, color):
    return Image.new("RGB", size, color)


@pytest.mark.parametrize("delta", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("wh", [(640, 480), (480, 640), (1024, 256), (500, 500)])
def test_graft_geometry(delta, wh):
    size = 336
    x0, y0, x1, y1 = graft_box(wh, delta, size)
    w, h = x1 - x0, y1 - y0
    assert max(w, h) == round(delta * size)
    assert abs(w / h - wh[0] / wh[1]) < 0.02 * max(1, wh[0] / wh[1])
    assert (x1, y0) == (size, 0)  # flush with the upper-right corner
    out = np.asarray(graft(solid((400, 400), (0, 0, 255)), solid(wh, (255, 0, 0)), delta, size)).astype(int)
    assert out.shape == (size, size, 3)
    is_street = (out[..., 0] > 200) & (out[..., 2] < 50)
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    # I_s = M*I_sa + (1-M)*I_st: street view exactly on the box, satellite everywhere else.
    assert (is_street == mask).all()


@pytest.mark.parametrize("corner,expect", [("upper_left", (0, 0)), ("lower_right", (168, 210)),
                                           ("lower_left", (0, 210))])
def test_graft_corners(corner, expect):
    x0, y0, x1, y1 = graft_box((640, 480), 0.5, 336, corner)
    assert (x0, y0) == expect and (x1 - x0, y1 - y0) == (168, 126)


def test_bad_delta_and_corner():
    with pytest.raises(ValueError, match="delta"):
        street_view_size(640, 480, 0.0, 336)
    with pytest.raises(ValueError, match="corner"):
        graft_box((640, 480), 0.5, 336, "middle")


def test_stitched_and_separate_variants():
    sat, sv = solid((300, 300), (0, 0, 255)), solid((640, 480), (255, 0, 0))
    st = np.asarray(stitch(sat, sv, 336)).astype(int)
    assert st.shape == (336, 336, 3)
    row = st[168]
    # Satellite on the left ~ 300/(300+400) of the width, street view to its right, padding above and below.
    blue = (row[:, 2] > 200) & (row[:, 0] < 50)
    red = (row[:, 0] > 200) & (row[:, 2] < 50)
    assert abs(blue.sum() - 336 * 300 / 700) <= 2 and abs(red.sum() - 336 * 400 / 700) <= 2
    assert tuple(st[2, 168]) == (122, 116, 104)
    a, b = separate(sat, sv, 336)
    assert a.size == b.size == (336, 336)
    b = np.asarray(b).astype(int)
    assert tuple(b[2, 168]) == (122, 116, 104) and b[168, 168, 0] > 200


def smooth_image(rng, wh):
    """Photo-like content (smooth, so JPEG keeps it): random colours at 1/40 resolution, upsampled."""
    small = rng.integers(0, 255, (wh[1] // 40 + 1, wh[0] // 40 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(wh, Image.Resampling.BICUBIC)


def make_pairs(tmp_path, n_locations=3, views=4):
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n_locations):
        sat = tmp_path / "crops" / f"{i}.png"
        sat.parent.mkdir(exist_ok=True)
        smooth_image(rng, (336, 336)).save(sat)
        for v in range(views):
            sv = tmp_path / "views" / f"{i}_{v}.jpg"
            sv.parent.mkdir(exist_ok=True)
            smooth_image(rng, (640, 480)).save(sv, quality=90)
            pairs.append(GraftPair(sat, sv, f"loc{i}/{v}.jpg"))
    return pairs


def test_fast_path_matches_plain_graft(tmp_path):
    pairs = make_pairs(tmp_path, 1, 1)
    out = graft_file(pairs[0].satellite, pairs[0].street_view, tmp_path / "o.jpg")[0]
    fast = np.asarray(Image.open(out)).astype(int)
    plain = np.asarray(graft(Image.open(pairs[0].satellite), Image.open(pairs[0].street_view))).astype(int)
    # Draft decoding at 1/2 scale then resizing differs from full decoding only by resampling and JPEG noise.
    assert np.abs(fast - plain).mean() < 3
    assert np.abs(fast[200:, :150] - plain[200:, :150]).mean() < 2  # satellite part


def test_batch_pool_resume_and_bad_inputs(tmp_path):
    pairs = make_pairs(tmp_path)
    (tmp_path / "views" / "1_2.jpg").write_bytes(b"not a jpeg")
    data = (tmp_path / "views" / "2_0.jpg").read_bytes()
    (tmp_path / "views" / "2_0.jpg").write_bytes(data[: len(data) // 3])  # truncated download
    pairs.append(GraftPair(tmp_path / "crops" / "0.png", tmp_path / "views" / "missing.jpg", "loc0/missing.jpg"))
    out = tmp_path / "grafted"
    report = graft_batch(pairs, out, workers=2, progress=False)
    assert report.written == 10 and report.already_done == 0
    failed = dict(report.failed)
    assert set(failed) == {"loc1/2.jpg", "loc2/0.jpg", "loc0/missing.jpg"}
    assert "1_2.jpg" in failed["loc1/2.jpg"] and "2_0.jpg" in failed["loc2/0.jpg"]
    assert "missing.jpg: not found" in failed["loc0/missing.jpg"]
    assert Image.open(out / "loc0" / "3.jpg").size == (336, 336)
    assert not list(out.rglob(".*.tmp"))

    single = graft_batch(pairs[:4], tmp_path / "single", workers=1, progress=False)
    assert single.written == 4
    assert (tmp_path / "single" / "loc0" / "1.jpg").read_bytes() == (out / "loc0" / "1.jpg").read_bytes()

    again = graft_batch(pairs, out, workers=2, progress=False)
    assert (again.written, again.already_done, len(again.failed)) == (0, 10, 3)

    sep = graft_batch(pairs[:2], tmp_path / "sep", variant="separate", workers=1, progress=False)
    assert sep.written == 2 and (tmp_path / "sep" / "loc0" / "0.satellite.jpg").is_file()
    assert (tmp_path / "sep" / "loc0" / "0.street.jpg").is_file()


def test_single_pair_errors_name_the_file(tmp_path):
    pairs = make_pairs(tmp_path, 1, 1)
    with pytest.raises(GraftError, match="nowhere.png: not found"):
        graft_file(tmp_path / "nowhere.png", pairs[0].street_view, tmp_path / "o.jpg")


def test_single_pair_never_writes_over_its_inputs(tmp_path):
    pair = make_pairs(tmp_path, 1, 1)[0]
    before = pair.street_view.read_bytes()
    with pytest.raises(DataError, match="--out is the --street-view input itself"):
        graft_file(pair.satellite, pair.street_view, pair.street_view)
    assert pair.street_view.read_bytes() == before


def test_manifest_and_cli(tmp_path):
    pairs = make_pairs(tmp_path, 2, 1)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"satellite": str(p.satellite.relative_to(tmp_path)),
                                            "street_view": str(p.street_view.relative_to(tmp_path)),
                                            "out": p.out}) + "\n" for p in pairs))
    assert [p.satellite for p in read_graft_manifest(manifest)] == [p.satellite for p in pairs]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"satellite": "a", "street_view": "b", "out": "x"}\n{"satellite": "a", "out": "y"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2: missing key"):
        read_graft_manifest(bad)

    cli = [sys.executable, str(ROOT / "datasets_prep" / "graft.py")]
    single = subprocess.run(cli + ["--satellite", str(pairs[0].satellite), "--street-view", str(pairs[0].street_view),
                                   "--out", str(tmp_path / "one.jpg"), "--delta", "0.3", "--size", "224"],
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    assert Image.open(tmp_path / "one.jpg").size == (224, 224)
    batch = subprocess.run(cli + ["--manifest", str(manifest), "--out-dir", str(tmp_path / "g"), "--workers", "1"],
                           capture_output=True, text=True)
    assert batch.returncode == 0, batch.stderr
    assert "2 written" in batch.stdout
    missing = subprocess.run(cli + ["--satellite", str(tmp_path / "no.png"), "--street-view",
                                    str(pairs[0].street_view), "--out", str(tmp_path / "two.jpg")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "no.png: not found" in missing.stderr


@pytest.mark.parametrize("out", ["../../escape.jpg", "/tmp/escape.jpg", "", 5, "a/../../b.jpg", "."])
def test_manifest_outputs_stay_inside_the_out_dir(tmp_path, out):
    import json

    from addressvlm.data.graft import read_graft_manifest
    from addressvlm.core.records import DataError

    manifest = tmp_path / "manifest.jsonl"
    rows = [{"satellite": "s.jpg", "street_view": "v.jpg", "out": "fine/ok.jpg"},
            {"satellite": "s.jpg", "street_view": "v.jpg", "out": out}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"manifest\.jsonl:2: "):
        read_graft_manifest(manifest)


@pytest.mark.parametrize("first, second", [("x.png", "x.jpg"), ("a/x", "a/x.jpeg"), ("x.tar.gz", "x.tar.png")])
def test_manifest_outputs_that_become_one_file_are_refused(tmp_path, first, second):
    """`x.png` and `x.jpg` both become `x.jpg` (outputs are JPEGs): "2 written" while one file existed."""
    pairs = make_pairs(tmp_path, 1, 2)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"satellite": str(p.satellite), "street_view": str(p.street_view),
                                            "out": out}) + "\n" for p, out in zip(pairs, (first, second))))
    run = subprocess.run([sys.executable, str(ROOT / "datasets_prep" / "graft.py"), "--manifest", str(manifest),
                          "--out-dir", str(tmp_path / "g"), "--workers", "1"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(f"error: {manifest}:2: output {second!r} already on line 1")
    assert not (tmp_path / "g").exists()


def test_a_link_inside_the_out_dir_does_not_lead_outside(tmp_path):
    """`out: lnk/file.jpg` with `lnk -> /elsewhere` wrote outside --out-dir: refused before any image is written."""
    pairs = make_pairs(tmp_path, 1, 2)
    elsewhere, out_dir = tmp_path / "elsewhere", tmp_path / "g"
    elsewhere.mkdir()
    out_dir.mkdir()
    (out_dir / "lnk").symlink_to(elsewhere, target_is_directory=True)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"satellite": str(p.satellite), "street_view": str(p.street_view),
                                            "out": out}) + "\n" for p, out in zip(pairs, ("ok.jpg", "lnk/file.jpg"))))
    with pytest.raises(ValueError, match=f"output 'lnk/file.jpg' would be written to {elsewhere}, outside the output "
                                         f"folder {out_dir}"):
        graft_batch(manifest, out_dir, workers=1, progress=False)
    assert not list(elsewhere.iterdir()) and not (out_dir / "ok.jpg").exists()
    # A link that stays inside, and an output folder that is itself a link, are fine.
    (out_dir / "sub").mkdir()
    (out_dir / "lnk").unlink()
    (out_dir / "lnk").symlink_to(out_dir / "sub", target_is_directory=True)
    (tmp_path / "via").symlink_to(out_dir, target_is_directory=True)
    assert graft_batch(manifest, tmp_path / "via", workers=1, progress=False).written == 2
    assert (out_dir / "sub" / "file.jpg").is_file()


@pytest.mark.parametrize("image", ["../victim/x.jpg", "/abs/x.jpg", "images/../../x.jpg"])
def test_city_table_images_stay_inside_the_city_root(tmp_path, image):
    from addressvlm.core.records import DataError, read_locations

    table = tmp_path / "locations.csv"
    table.write_text("image,location_id,lat,lon,street,district\n"
                     "images/a.jpg,l1,40.4,-79.9,Ash Street,Hill\n"
                     f"{image},l2,40.4,-79.9,Ash Street,Hill\n")
    with pytest.raises(DataError, match=r"locations\.csv:3: image .* (outside its root|absolute)"):
        read_locations(table)


def test_city_table_paths_are_normalised(tmp_path):
    from addressvlm.core.records import read_locations

    table = tmp_path / "locations.csv"
    table.write_text("image,location_id,lat,lon,street,district\n./images/x/../a.jpg,l1,40.4,-79.9,Ash Street,Hill\n")
    assert read_locations(table)[0].image == "images/a.jpg"


def test_street_views_are_grafted_as_shown(tmp_path):
    """A phone photo stored sideways with an EXIF orientation, and a PNG with transparent pixels that hold some
    colour, are grafted as a viewer shows them: upright, and white where transparent."""
    from addressvlm.data.graft import graft_file

    satellite = tmp_path / "sat.png"
    Image.new("RGB", (336, 336), (0, 0, 255)).save(satellite)
    # Stored 400 x 300 (left half red, right half green), shown turned 90 degrees clockwise: 300 x 400, red on top.
    stored = Image.new("RGB", (400, 300), (255, 0, 0))
    stored.paste((0, 255, 0), (200, 0, 400, 300))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)
    graft_file(satellite, tmp_path / "sideways.jpg", tmp_path / "out1.jpg")
    out = Image.open(tmp_path / "out1.jpg").convert("RGB")
    # delta 0.5: the view's longer side (400, now vertical) is 168 px, in the upper-right corner.
    top, bottom = out.getpixel((336 - 60, 20)), out.getpixel((336 - 60, 150))
    assert top[0] > 200 and top[1] < 60 and bottom[1] > 200 and bottom[0] < 60
    assert out.getpixel((336 - 140, 20))[2] > 200  # left of the 126 px wide upright view: satellite

    clear = Image.new("RGBA", (400, 300), (255, 0, 255, 0))  # fully transparent, hidden colour magenta
    clear.save(tmp_path / "clear.png")
    graft_file(satellite, tmp_path / "clear.png", tmp_path / "out2.jpg")
    pixel = Image.open(tmp_path / "out2.jpg").convert("RGB").getpixel((336 - 40, 20))
    assert min(pixel) > 230  # white, not magenta


def test_settings_and_outputs_are_checked_before_any_work(tmp_path):
    from addressvlm.data.graft import graft_file

    Image.new("RGB", (336, 336)).save(tmp_path / "sat.png")
    Image.new("RGB", (400, 300)).save(tmp_path / "sv.jpg")
    (tmp_path / "afile").write_text("")
    for kwargs, message in [({"size": 0}, "size must be at least 16"), ({"delta": 0}, r"delta must be in \(0, 1\]"),
                            ({"out": tmp_path / "want.png"}, "give a .jpg name"),
                            ({"out": tmp_path / "afile" / "o.jpg"}, "is a file, not a folder")]:
        with pytest.raises(ValueError, match=message):
            graft_file(tmp_path / "sat.png", tmp_path / "sv.jpg", **{"out": tmp_path / "o.jpg", **kwargs})
    assert not (tmp_path / "want.jpg").exists()


def test_empty_or_cut_off_outputs_are_grafted_again(tmp_path):
    from addressvlm.data.graft import graft_batch

    pairs = make_pairs(tmp_path, n_locations=1, views=3)
    out = tmp_path / "out"
    assert graft_batch(pairs, out, workers=1, progress=False).written == 3
    empty, cut = (out / pairs[0].out), (out / pairs[1].out)
    empty.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:100])
    report = graft_batch(pairs, out, workers=1, progress=False)
    assert (report.written, report.already_done) == (2, 1)
    assert Image.open(cut).size == (336, 336)
