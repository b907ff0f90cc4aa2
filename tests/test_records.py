"""Input files as people make them: Excel's BOM, another encoding, quoted line breaks, empty files."""
import subprocess
import sys

import pytest

from addressvlm.records import DataError, read_locations
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

    from addressvlm.records import write_atomic

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "stats.json", "{}")
    assert list(tmp_path.iterdir()) == []
