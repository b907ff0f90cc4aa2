"""One normaliser for place names, everywhere names are compared."""
from addressvlm.core.names import collision_report, mentions_name, normalize_name, spelling_collisions
from addressvlm.core.records import Location


def test_spellings_of_one_street_are_one_name():
    assert normalize_name("Ash St") == normalize_name("Ash Street") == normalize_name("ASH STREET.")
    assert normalize_name("St Clair St") == "saint clair street"  # "St" first is Saint, in every use
    assert mentions_name("It was taken near St Clair St. in Oakland.", "Saint Clair Street")
    assert mentions_name("It was taken on Forbes Ave. near Ross St", "Forbes Avenue")
    assert not mentions_name("It was taken on Forbes Avenue East", "Forbes Avenue West")
    assert spelling_collisions(["Ash St", "Ash Street", "ASH STREET", "Elm Road"]) == {
        "ash street": ["ASH STREET", "Ash St", "Ash Street"]}


def test_collisions_never_become_two_options_and_are_reported():
    import random

    from addressvlm.data.vqa import Distractors

    streets = ["Ash Street", "Ash St", "ASH STREET", "Elm Road", "Oak Lane", "Pine Way", "Birch Row"]
    rows = [Location(image=f"{i}.jpg", location_id=f"l{i}", lat=40.0 + i * 1e-3, lon=-80.0, street=streets[i % 7],
                     district=["Hill", "Harbour", "Park", "Old Town"][i % 4]) for i in range(28)]
    for mode in ("random", "nearest"):
        distractors = Distractors(rows, mode)
        assert sum(normalize_name(n) == "ash street" for n in distractors.names["street"]) == 1
        for row in rows:
            picked = distractors.pick("street", row, random.Random(0))
            assert normalize_name(row.street) not in {normalize_name(n) for n in picked}
    report = collision_report(rows)
    assert len(report) == 1 and "'ASH STREET' / 'Ash St' / 'Ash Street'" in report[0]
