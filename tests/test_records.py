"""Input files as people make them: Excel's BOM, another encoding, quoted line breaks, empty files."""
import subprocess
import sys

import pytest

from addressvlm.core.records import DataError, read_locations
from conftest import REPO

HEADER = "image,location_id,lat,lon,street,district\n"


def test_a_byte_order_mark_is_accepted(tmp_path):
    table = tmp_path / "locations.csv"
    table.write_bytes(b"\xef\xbb\xbf" + (HEADER + "images/a.jpg,l1,40.4,-79.9,Ash Street,Hill\n").encode())
    assert read_locations(table)[0].image == "images/a.jpg"


def test_another_encoding_is_named_with_its_line(tmp_path):
    table = tmp_path / "locations.csv"
    table.write_bytes((HEADER + "images/a.jpg,l1,40.4,-79.9,Ash Street,Hill\n").encode()
                      + "images/b.jpg,l2,40.4,-79.9,Königstraße,Hill\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"locations\.csv:3: not UTF-8"):
        read_locations(table)


def test_rows_after_a_quoted_line_break_are_named_by_their_own_line(tmp_path):
    table = tmp_path / "locations.csv"
    table.write_text(HEADER + 'images/a.jpg,l1,40.4,-79.9,"Ash\nStreet",Hill\n'
                     "images/b.jpg,l2,400,-79.9,Elm Road,Hill\n")
    with pytest.raises(DataError, match=r"locations\.csv:4: latitude 400"):
        read_locations(table)


@pytest.mark.parametrize("tool", ["score", "infer"])
def test_an_empty_question_file_is_an_error(tmp_path, tool):
    questions, predictions = tmp_path / "q.jsonl", tmp_path / "p.jsonl"
    questions.write_text("")
    predictions.write_text("")
    args = (["eval/score.py", "--questions", str(questions), "--predictions", str(predictions)] if tool == "score"
            else ["eval/infer.py", "--questions", str(questions), "--out", str(predictions), "--hf", str(tmp_path)])
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "no questions" in done.stderr


@pytest.mark.parametrize("second,message", [
    ("images/b.jpg,l1,40.46,-79.9,Ash Street,Hill", r"locations\.csv:3: location_id 'l1' lies 6,672 m from"),
    ("images/b.jpg,l1,40.4,-79.9,Elm Road,Hill", r"locations\.csv:3: location_id 'l1' has street 'Elm Road'"),
])
def test_one_location_id_is_one_place(tmp_path, second, message):
    table = tmp_path / "locations.csv"
    table.write_text(HEADER + "images/a.jpg,l1,40.4,-79.9,Ash Street,Hill\n" + second + "\n")
    with pytest.raises(DataError, match=message):
        read_locations(table)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    from addressvlm.core.records import write_atomic

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "stats.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_an_output_reached_through_a_link_is_still_the_input(tmp_path):
    """Outputs and inputs are compared as resolved paths: a link, `..` or a relative spelling is no way around."""
    from addressvlm.core.records import refuse_output_over_inputs

    data = tmp_path / "data"
    (data / "city").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    for output, relation in ((tmp_path / "link" / "city", "is the --city input itself"),
                             (tmp_path / "link" / ".." / "data", "holds the --city input"),
                             (tmp_path / "link" / "city" / "out", "lies inside the --city input")):
        with pytest.raises(DataError, match=relation):
            refuse_output_over_inputs(output, [("--city", data / "city"), ("--other", None)], "--out")
    refuse_output_over_inputs(tmp_path / "link" / "town", [("--city", data / "city")], "--out")  # a sibling: fine


def test_an_output_folder_must_be_a_folder_it_can_make(tmp_path):
    from addressvlm.core.records import writable_output

    (tmp_path / "afile").write_text("")
    assert writable_output(tmp_path / "new" / "deeper", "--out", folder=True) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not made
    with pytest.raises(DataError, match="afile: --out is a file, not a folder"):
        writable_output(tmp_path / "afile", "--out", folder=True)
    with pytest.raises(DataError, match=f"--out cannot be made: {tmp_path / 'afile'} is a file, not a folder"):
        writable_output(tmp_path / "afile" / "sub", "--out", folder=True)
    assert list(tmp_path.iterdir()) == [tmp_path / "afile"]  # the probe file leaves nothing behind
