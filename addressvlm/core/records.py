"""The project's data files: one reader and one writer per format, each with a schema check.

Formats (docs/design.md section 2):
- ``locations.csv``: the city table, one row per street-view image.
- LLaVA JSON (``train.json``/``val.json`` of either stage): ``[{"id", "image", "conversations": [...]}]``.
- ``test_questions.jsonl`` (and ``val_questions.jsonl``, same format): one single-turn question per line.
- ``predictions.jsonl``: ``{"question_id", "prediction"}``, appended and flushed per line.
- ``ranked.jsonl``: ``{"question_id", "ranking": [{"name", "logprob"}, ...]}`` best first, appended like predictions.
- A gazetteer CSV: extra ``street``/``district`` names (and pairs) to rank beside the city table's.
- ``levels.json`` in a city root: what the city calls its district and street levels (Tokyo: chome, street).
- Any other append-only JSONL (alignment labels): ``JsonlAppender`` plus ``read_jsonl``.
- ``<name>.settings.json`` beside a resumable output or a training run's folder: the settings that made it
  (``read_settings``; a run's also its seconds: ``read_run_record``/``write_run_record``).
- Cross-view retrieval (docs/retrieval.md): ``gallery.jsonl``, ``queries.jsonl``, ``retrieved.jsonl``.
- ``rewards.jsonl`` (``eval/score.py --rewards``): ``{"question_id", "reward"}``, the street-level reward in [0, 1].

Errors name the file and the line (1-based, as an editor shows it) so a user can fix the row.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


class DataError(ValueError):
    """A malformed input file; the message names the file and line."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a whole file through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        # mkstemp creates the file 0600; give it the permissions any other new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no temporary file is left behind
        Path(tmp).unlink(missing_ok=True)
        raise


def writable_output(path: str | os.PathLike, what: str, *, folder: bool = False) -> Path:
    """``path`` checked as an output before any work, so a long run never ends in a traceback at its last write:
    not a folder where a file goes (nor a file where a folder goes), under a folder that exists or can be made, one
    this process may write in. Raises ``DataError`` naming the path and ``what`` (the option, e.g. ``--json``)."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise DataError(path, None, f"{what} is a file, not a folder")
    if not folder and path.is_dir():
        raise DataError(path, None, f"{what} is a folder: give a file name")
    nearest = path if folder else path.parent
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise DataError(path, None, f"{what} cannot be made: {nearest} is a file, not a folder")
    try:  # the one sure test (permissions, read-only mounts, root): create a file there
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as exc:
        raise DataError(path, None, f"{what} cannot be written: {nearest} refuses new files ({exc.strerror})") \
            from None
    return path


def refuse_output_over_inputs(output: str | os.PathLike,
                              inputs: Iterable[tuple[str, str | os.PathLike | None]], what: str) -> None:
    """Stop a tool that would write over what it reads: an output that is one of the ``inputs`` (``(option, path)``
    pairs; a ``None`` path skipped), holds one (a folder whose replacement deletes it) or lies inside one (a folder
    input the output would change). Paths are compared resolved, symbolic links followed. Raises ``DataError``
    naming both."""
    out = Path(output).resolve()
    for option, given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if out == source:
            relation = f"is the {option} input itself"
        elif out in source.parents:
            relation = f"holds the {option} input {given}"
        elif source in out.parents:
            relation = f"lies inside the {option} input {given}"
        else:
            continue
        raise DataError(output, None, f"{what} {relation}: choose an output apart from the inputs")


def read_text(path: str | os.PathLike) -> str:
    """A data file's text: UTF-8, a byte-order mark (Excel's "CSV UTF-8") accepted; anything else is a
    ``DataError`` naming the line of the first byte that is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(path, line, f"not UTF-8 (byte 0x{data[exc.start]:02x}): save the file as UTF-8") from None


def replace_generated_block(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with its generated part, from the marker ``begin`` to the marker ``end`` (both included), replaced by
    ``block`` (which writes the markers again). Raises ``ValueError`` naming the markers when either is missing."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"the generated section's markers {begin!r} and {end!r} are missing")
    return text[:start] + block + text[stop + len(end):]


def path_inside_root(value: Any, what: str) -> str:
    """A path read from data, relative to its root (the city root, a manifest's output folder), as ``a/b.jpg``.

    The one rule for every such path: a non-empty string, not absolute, and never outside its root (``..`` may not
    climb above it). Raises ``ValueError`` naming the value; readers turn that into a ``DataError`` with file and line.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty relative path, not {value!r}")
    text = value.strip().replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"{what} {value!r} is absolute: give it relative to its root")
    parts: list[str] = []
    for part in text.split("/"):
        if part == "..":
            if not parts:
                raise ValueError(f"{what} {value!r} lies outside its root")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    if not parts:
        raise ValueError(f"{what} {value!r} names the root itself, not a file")
    return "/".join(parts)


@contextmanager
def replaced_folder(out_dir: str | os.PathLike, owned: Iterable[str]) -> Iterator[Path]:
    """Write a multi-file output all-or-nothing: the block writes into a staging folder beside ``out_dir``, which
    then takes ``out_dir``'s place. A run killed before the end leaves ``out_dir`` as it was, never half old and half
    new. ``owned`` names the files the tool writes; a folder holding anything else is refused (nothing the user put
    there may be lost in the swap)."""
    out_dir = Path(out_dir)
    owned = set(owned)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(out_dir, None, "output folder is a file")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in owned)
        if foreign:
            raise DataError(out_dir, None, "output folder holds files this tool does not write "
                                           f"({', '.join(foreign[:5])}): use a folder of its own")
    staging, old = (out_dir.with_name(f".{out_dir.name}.{suffix}") for suffix in ("staging", "old"))
    for leftover in (staging, old):  # an earlier run killed mid-way
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------- city table
LOCATION_COLUMNS = ("image", "location_id", "lat", "lon", "street", "district")
LOCATION_OPTIONAL = ("heading", "cross_street", "split")


@dataclass(frozen=True)
class Location:
    """One street-view image of the city table. ``image`` is relative to the city root."""

    image: str
    location_id: str
    lat: float
    lon: float
    street: str
    district: str
    heading: float | None = None
    cross_street: str = ""
    split: str = ""
    # Columns of the user's own (notes, source ids, ...), in their order: kept through every read and rewrite.
    extra: tuple[tuple[str, str], ...] = ()


def _check_location(row: Location, path, line: int) -> None:
    if not row.image:
        raise DataError(path, line, "empty 'image'")
    if not row.location_id:
        raise DataError(path, line, "empty 'location_id'")
    if not row.street.strip():
        raise DataError(path, line, f"empty 'street' for image {row.image!r}")
    if not row.district.strip():
        raise DataError(path, line, f"empty 'district' for image {row.image!r}")
    if not (-90.0 <= row.lat <= 90.0) or math.isnan(row.lat):
        raise DataError(path, line, f"latitude {row.lat} out of range [-90, 90]")
    if not (-180.0 <= row.lon <= 180.0) or math.isnan(row.lon):
        raise DataError(path, line, f"longitude {row.lon} out of range [-180, 180]")
    if row.split and row.split not in ("train", "val", "test"):
        raise DataError(path, line, f"split {row.split!r} is not train, val or test")


def _read_csv(path: Path, columns: Sequence[str], what: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and the ``(line, row)`` pairs of a CSV whose header must name ``columns`` (``what`` names the file
    in the not-found error). A quoted field may span lines: a row's line is the one after the previous row ended."""
    if not path.is_file():
        raise DataError(path, None, f"{what} not found")
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(path, 1, f"missing column(s) {', '.join(missing)}; header is {', '.join(header)}")
    rows, previous_end = [], reader.line_num
    for raw in reader:
        rows.append((previous_end + 1, raw))
        previous_end = reader.line_num
    return header, rows


def read_locations(path: str | os.PathLike) -> list[Location]:
    """Read and validate ``locations.csv``: required columns, ranges, no duplicate image."""
    path = Path(path)
    header, raw_rows = _read_csv(path, LOCATION_COLUMNS, "city table")
    known = set(LOCATION_COLUMNS) | set(LOCATION_OPTIONAL)
    extra_columns = [c for c in header if c not in known]
    rows, seen, first_of_location = [], {}, {}
    for line, raw in raw_rows:
        try:
            heading = raw.get("heading") or ""
            row = Location(
                image=(raw["image"] or "").strip(),
                location_id=(raw["location_id"] or "").strip(),
                lat=float(raw["lat"]),
                lon=float(raw["lon"]),
                street=" ".join((raw["street"] or "").split()),
                district=" ".join((raw["district"] or "").split()),
                heading=float(heading) if heading.strip() else None,
                cross_street=" ".join((raw.get("cross_street") or "").split()),
                split=(raw.get("split") or "").strip(),
                extra=tuple((c, raw.get(c) or "") for c in extra_columns),
            )
        except (TypeError, ValueError) as exc:
            raise DataError(path, line, f"bad value: {exc}") from None
        try:
            row = replace(row, image=path_inside_root(row.image, "image"))
        except ValueError as exc:
            raise DataError(path, line, str(exc)) from None
        _check_location(row, path, line)
        if row.image in seen:
            raise DataError(path, line, f"duplicate image {row.image!r} (first on line {seen[row.image]})")
        seen[row.image] = line
        _check_same_place(row, line, first_of_location, path)
        rows.append(row)
    if not rows:
        raise DataError(path, None, "city table has no rows")
    return rows


def location_lines(path: str | os.PathLike) -> dict[str, int]:
    """The line of each image's row in a ``locations.csv`` that ``read_locations`` accepts, for messages that point
    the user at a row."""
    _, raw_rows = _read_csv(Path(path), LOCATION_COLUMNS, "city table")
    return {path_inside_root((raw["image"] or "").strip(), "image"): line for line, raw in raw_rows}


# The views of one location are taken at one place (a panorama's crops, one capture point): rows further apart than
# this, or naming another street or district, are two places under one id, and averaging them would be wrong.
LOCATION_SPREAD_M = 100.0


def _check_same_place(row: Location, line: int, first_of_location: dict, path) -> None:
    first, first_line = first_of_location.setdefault(row.location_id, (row, line))
    if first is row:
        return
    for field in ("street", "district"):
        if getattr(row, field) != getattr(first, field):
            raise DataError(path, line, f"location_id {row.location_id!r} has {field} {getattr(row, field)!r} here "
                                        f"but {getattr(first, field)!r} on line {first_line}: one place, one address")
    north = math.radians(row.lat - first.lat) * 6_371_000.0
    east = math.radians(row.lon - first.lon) * 6_371_000.0 * math.cos(math.radians(first.lat))
    if math.hypot(north, east) > LOCATION_SPREAD_M:
        raise DataError(path, line, f"location_id {row.location_id!r} lies {math.hypot(north, east):,.0f} m from its "
                                    f"view on line {first_line} (more than {LOCATION_SPREAD_M:.0f} m): two places "
                                    "under one id?")


def write_locations(path: str | os.PathLike, rows: Iterable[Location]) -> None:
    """Write ``locations.csv`` (validated, written atomically). Optional columns appear only when used; the user's
    own columns (``Location.extra``) follow, in their order."""
    rows = list(rows)
    for i, row in enumerate(rows, start=2):
        _check_location(row, path, i)
    used_optional = [c for c in LOCATION_OPTIONAL if any(getattr(r, c) not in (None, "") for r in rows)]
    extra_columns = list(dict.fromkeys(name for row in rows for name, _ in row.extra))
    columns = list(LOCATION_COLUMNS) + used_optional

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns + extra_columns)
    for row in rows:
        values = []
        for c in columns:
            v = getattr(row, c)
            values.append("" if v is None else (repr(v) if isinstance(v, float) else v))
        own = dict(row.extra)
        writer.writerow(values + [own.get(c, "") for c in extra_columns])
    write_atomic(path, buf.getvalue())


def location_centroids(rows: Iterable[Location]) -> dict[str, tuple[float, float]]:
    """``location_id -> (lat, lon)``: the mean position of a location's views (they normally coincide)."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        s = sums.setdefault(r.location_id, [0.0, 0.0, 0])
        s[0] += r.lat
        s[1] += r.lon
        s[2] += 1
    return {loc: (s[0] / s[2], s[1] / s[2]) for loc, s in sums.items()}


# --------------------------------------------------------------------------------------------- LLaVA JSON
def _check_conversation_record(rec: Any, path, index: int) -> None:
    where = f"record {index}"
    if not isinstance(rec, dict) or "conversations" not in rec or "id" not in rec:
        raise DataError(path, None, f"{where}: needs 'id' and 'conversations'")
    conv = rec["conversations"]
    if not conv or len(conv) % 2:
        raise DataError(path, None, f"{where} ({rec['id']}): conversations must be human/gpt pairs")
    for turn, msg in enumerate(conv):
        expected = "human" if turn % 2 == 0 else "gpt"
        if msg.get("from") != expected or not isinstance(msg.get("value"), str):
            raise DataError(path, None, f"{where} ({rec['id']}): turn {turn} should be from {expected!r} with a text value")
    if "image" in rec and "<image>" not in conv[0]["value"]:
        raise DataError(path, None, f"{where} ({rec['id']}): has an image but its first turn lacks '<image>'")
    if isinstance(rec.get("image"), list):
        # Several images (Table 1's "separate" input): the i-th <image> of the first turn is the i-th path.
        images, tokens = rec["image"], conv[0]["value"].count("<image>")
        if len(images) < 2 or not all(isinstance(i, str) for i in images) or tokens != len(images) or \
                any("<image>" in msg["value"] for msg in conv[1:]):
            raise DataError(path, None, f"{where} ({rec['id']}): an image list needs two or more paths and as many "
                            f"'<image>' tokens in the first turn only; it has {len(images)} and {tokens}")


def llava_images(rec: dict) -> list[str]:
    """The image paths of a LLaVA record: none, one, or the list of a several-image record."""
    image = rec.get("image")
    return [] if image is None else image if isinstance(image, list) else [image]


def read_llava_json(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "LLaVA JSON not found")
    try:
        records = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
    if not isinstance(records, list):
        raise DataError(path, 1, "a LLaVA JSON file holds a list of records")
    for i, rec in enumerate(records):
        _check_conversation_record(rec, path, i)
    return records


def write_llava_json(path: str | os.PathLike, records: list[dict]) -> None:
    for i, rec in enumerate(records):
        _check_conversation_record(rec, path, i)
    # One record per line keeps diffs and `head` readable while staying a plain JSON list.
    body = ",\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records)
    write_atomic(path, "[\n" + body + "\n]\n")


# --------------------------------------------------------------------------------------------- JSONL
def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[tuple[int, dict]]:
    """``(line_number, record)`` of every line; a malformed line or a missing key is a ``DataError``.

    A truncated last line (a crash mid-write) is an error too: callers that resume use ``JsonlAppender``,
    which repairs it. The lines are parsed in one call (several times faster for the 200K-line files scoring reads);
    when that fails, line by line, to name the line at fault.
    """
    required = tuple(required)
    if not Path(path).is_file():
        raise DataError(path, None, "file not found")
    text = read_text(path)
    body = text[:-1] if text.endswith("\n") else text
    lines = body.count("\n") + 1 if body else 0
    # A raw line break cannot occur inside a JSON value, so with every line break made a comma the file parses as
    # one list when each line is one value; blank lines, bad lines and lines holding several values take the slow
    # way.
    try:
        records = json.loads("[" + body.replace("\n", ",") + "]")
        line_numbers = range(1, lines + 1)
    except json.JSONDecodeError:
        records = None
    if records is None or len(records) != lines:
        numbered = [(n, line) for n, line in enumerate(body.split("\n"), start=1) if line.strip()]
        line_numbers, records = [n for n, _ in numbered], []
        for line_no, line in numbered:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(path, line_no, f"invalid JSON: {exc.msg}") from None
    required_keys = frozenset(required)
    for line_no, rec in zip(line_numbers, records):
        if type(rec) is not dict:
            raise DataError(path, line_no, "each line must be a JSON object")
        if not rec.keys() >= required_keys:
            missing = [k for k in required if k not in rec]
            raise DataError(path, line_no, f"missing key(s) {', '.join(missing)}")
    return list(zip(line_numbers, records))


# --------------------------------------------------------------------------------------------- settings beside outputs
def as_recorded(settings: dict) -> dict:
    """``settings`` as a settings file holds them (JSON types, keys sorted): a fresh dict compares with a read one."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_changes(before: dict, now: dict, shown: int = 6) -> str:
    """What differs between two recorded settings, nested keys dotted: ``"a.b: 1 then, 2 now; c: ..."``."""
    def flat(node, prefix=""):
        if isinstance(node, dict) and node:
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    old, new = flat(before), flat(now)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    listed = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in changed[:shown])
    return listed + (f"; and {len(changed) - shown} more" if len(changed) > shown else "")


def settings_path(output: str | os.PathLike) -> Path:
    """Where the settings that made ``output`` (a file or a run's folder) are kept: ``<name>.settings.json`` beside
    it."""
    output = Path(output)
    return output.with_name(output.name + ".settings.json")


def read_settings(output: str | os.PathLike) -> dict | None:
    """The settings recorded beside ``output`` (``JsonlAppender``'s), None when there are none."""
    path = settings_path(output)
    if not path.is_file():
        return None
    try:
        settings = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
    if type(settings) is not dict:
        raise DataError(path, None, "must hold a JSON object of settings")
    return settings


def file_identity(path: str | os.PathLike) -> str:
    """What tells one version of a file (or of a folder's files) from another without reading it: name, size and
    modification time to the nanosecond. A multi-GB checkpoint is identified in microseconds; any rewrite (a
    retrain, a copy without ``-p``) changes it, while content that merely stays put keeps it."""
    import datetime
    import hashlib

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path}: no file to identify")
    stats = [(p, p.stat()) for p in files]
    newest = max(st.st_mtime_ns for _, st in stats)
    when = datetime.datetime.fromtimestamp(newest // 10 ** 9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    size = sum(st.st_size for _, st in stats)
    if path.is_file():
        return f"{path.name}: {size} bytes, modified {when}.{newest % 10 ** 9:09d}Z"
    listing = "\n".join(f"{p.relative_to(path)} {st.st_size} {st.st_mtime_ns}" for p, st in stats)
    return (f"{path.name}/: {len(files)} files, {size} bytes, last modified {when}.{newest % 10 ** 9:09d}Z, "
            f"listing {hashlib.sha256(listing.encode()).hexdigest()[:12]}")


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content (first 16 hex digits): for data files, which tools rewrite byte-identical."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# A training run's record beside its work_dir: how it was trained (its settings) and how long it took.
RUN_RECORD_KEYS = ("settings", "seconds")


def read_run_record(work_dir: str | os.PathLike) -> dict | None:
    """``{"settings": {...}, "seconds": float}`` recorded beside a finished run, None when there is none."""
    record = read_settings(work_dir)
    if record is None:
        return None
    if not record.keys() >= set(RUN_RECORD_KEYS) or type(record["settings"]) is not dict \
            or not isinstance(record["seconds"], (int, float)):
        raise DataError(settings_path(work_dir), None, "a run record holds settings (an object) and seconds")
    return record


def write_run_record(work_dir: str | os.PathLike, settings: dict, seconds: float) -> None:
    write_atomic(settings_path(work_dir), json.dumps({"settings": as_recorded(settings), "seconds": round(seconds, 1)},
                                                     indent=2, sort_keys=True) + "\n")


class JsonlAppender:
    """Append-only JSONL writer for resumable work: each record is flushed (and fsynced) as it is written.

    On open it takes an exclusive lock on the file (a second writer is refused, not interleaved), drops a torn last
    line left by a crash, and ``done`` holds the keys already written, so a rerun skips them. ``settings`` (what
    produced the records: model, generation options, ...) are kept beside the file in ``<name>.settings.json``; a
    resume with other settings is refused rather than mixing the answers of two configurations.
    """

    def __init__(self, path: str | os.PathLike, key: str, required: Iterable[str] = (),
                 settings: dict | None = None):
        import fcntl

        self.path, self.key = Path(path), key
        self.required = tuple(required) + (key,)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set = set()
        self._f = open(self.path, "a", encoding="utf-8")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise DataError(self.path, None, "another process is writing this file; wait for it or choose another "
                                             "output") from None
        try:
            self._check_settings(settings)
            self._drop_torn_tail()
            for _, rec in read_jsonl(self.path, self.required):
                self.done.add(rec[key])
        except BaseException:
            self._f.close()
            raise

    def _check_settings(self, settings: dict | None) -> None:
        if settings is None:
            return
        sidecar = settings_path(self.path)
        settings = as_recorded(settings)
        has_records = self.path.stat().st_size > 0
        before = read_settings(self.path)
        if before is not None:
            if has_records and before != settings:
                raise DataError(self.path, None, "holds records made with other settings ("
                                + settings_changes(before, settings) + "): choose another output, or delete it to "
                                                                       "start over")
        elif has_records:
            raise DataError(self.path, None, f"holds records but no {sidecar.name} saying how they were made: choose "
                                             "another output, or delete it to start over")
        write_atomic(sidecar, json.dumps(settings, indent=2, sort_keys=True) + "\n")

    def _drop_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(keep)

    def write(self, record: dict) -> None:
        missing = [k for k in self.required if k not in record]
        if missing:
            raise ValueError(f"{self.path}: record lacks {', '.join(missing)}")
        self._f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(record[self.key])

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- level names
# The words questions and reports use for the two levels, by level key. The keys never change (they name the
# metrics A_d, A_s and the location columns); a city whose levels are called otherwise records its words in
# ``levels.json`` at its root, and its questions carry them as ``level_name``.
DEFAULT_LEVEL_NAMES = {"district": "district", "street": "street"}
LEVEL_NAMES_FILE = "levels.json"


def _check_level_names(names: Any, path) -> dict[str, str]:
    if not isinstance(names, dict) or sorted(names) != sorted(DEFAULT_LEVEL_NAMES) \
            or not all(isinstance(v, str) and v.strip() for v in names.values()):
        raise DataError(path, None, f"expected {{\"district\": WORD, \"street\": WORD}}, found {names!r}")
    return {level: names[level] for level in DEFAULT_LEVEL_NAMES}


def read_level_names(city_root: str | os.PathLike) -> dict[str, str]:
    """The city's level words from ``<city_root>/levels.json``; the paper's "district" and "street" without one."""
    path = Path(city_root) / LEVEL_NAMES_FILE
    if not path.is_file():
        return dict(DEFAULT_LEVEL_NAMES)
    try:
        names = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"not JSON: {exc.msg}") from None
    return _check_level_names(names, path)


def write_level_names(city_root: str | os.PathLike, names: dict[str, str]) -> None:
    path = Path(city_root) / LEVEL_NAMES_FILE
    write_atomic(path, json.dumps(_check_level_names(names, path), indent=2, ensure_ascii=False) + "\n")


def question_level_names(questions: Iterable[dict]) -> dict[str, str]:
    """The level words of test questions (their ``level_name``, the level key where absent). Questions of merged
    cities that call one level by different words give the key, with every word: "district (chome/district)"."""
    seen: dict[str, set[str]] = {level: set() for level in DEFAULT_LEVEL_NAMES}
    for q in questions:
        if q["level"] in seen:
            seen[q["level"]].add(q.get("level_name", q["level"]))
    return {level: (words.pop() if len(words) == 1 else f"{level} ({'/'.join(sorted(words))})" if words else level)
            for level, words in seen.items()}


# --------------------------------------------------------------------------------------------- questions
LEVELS = ("district", "street", "address")
QTYPES = ("generation", "judgment", "multiple_choice")
QUESTION_KEYS = ("question_id", "image", "level", "qtype", "question", "answer", "street", "district")


_QUESTION_KEY_SET = frozenset(QUESTION_KEYS)


def check_question(rec: dict, path, line: int | None) -> None:
    if not rec.keys() >= _QUESTION_KEY_SET:
        missing = [k for k in QUESTION_KEYS if k not in rec]
        raise DataError(path, line, f"missing key(s) {', '.join(missing)}")
    if rec["level"] not in LEVELS:
        raise DataError(path, line, f"level {rec['level']!r} not in {LEVELS}")
    if rec["qtype"] not in QTYPES:
        raise DataError(path, line, f"qtype {rec['qtype']!r} not in {QTYPES}")
    if "level_name" in rec and (rec["level"] == "address" or not isinstance(rec["level_name"], str)
                                or not rec["level_name"].strip()):
        raise DataError(path, line, f"level_name {rec['level_name']!r}: a district or street question's word for "
                                    "its level")
    if rec["qtype"] == "multiple_choice":
        opts = rec.get("options")
        if not isinstance(opts, dict) or sorted(opts) != ["A", "B", "C", "D"]:
            raise DataError(path, line, "multiple_choice needs options A, B, C, D")
        if rec["answer"] not in opts:
            raise DataError(path, line, f"answer {rec['answer']!r} is not an option letter")
    if rec["qtype"] == "judgment" and rec["answer"] not in ("Yes", "No"):
        raise DataError(path, line, f"judgment answer {rec['answer']!r} is not Yes or No")


def read_numbered_questions(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """``(line, question)`` pairs, for callers whose own errors must name a question's line."""
    out, seen = [], {}
    for line, rec in read_jsonl(path):
        check_question(rec, path, line)
        if rec["question_id"] in seen:
            raise DataError(path, line, f"duplicate question_id {rec['question_id']!r} (first on line {seen[rec['question_id']]})")
        seen[rec["question_id"]] = line
        out.append((line, rec))
    return out


def read_questions(path: str | os.PathLike) -> list[dict]:
    return [rec for _, rec in read_numbered_questions(path)]


def write_questions(path: str | os.PathLike, questions: Iterable[dict]) -> None:
    lines = []
    for i, q in enumerate(questions, start=1):
        check_question(q, path, i)
        lines.append(json.dumps(q, ensure_ascii=False, sort_keys=True))
    write_atomic(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------- predictions
PREDICTION_KEYS = ("question_id", "prediction")


def open_predictions(path: str | os.PathLike, settings: dict | None = None) -> JsonlAppender:
    """The predictions writer: resumable, one flushed line per answer, locked, its settings checked on resume."""
    return JsonlAppender(path, key="question_id", required=PREDICTION_KEYS, settings=settings)


def read_predictions(path: str | os.PathLike) -> dict[str, tuple[int, str]]:
    """``question_id -> (line, prediction)``; a duplicate id or a non-string prediction is an error."""
    out: dict[str, tuple[int, str]] = {}
    for line, rec in read_jsonl(path, PREDICTION_KEYS):
        if not isinstance(rec["prediction"], str):
            raise DataError(path, line, "prediction must be a string")
        qid = rec["question_id"]
        if qid in out:
            raise DataError(path, line, f"duplicate question_id {qid!r} (first on line {out[qid][0]})")
        out[qid] = (line, rec["prediction"])
    return out


# --------------------------------------------------------------------------------------------- ranked names
RANKED_KEYS = ("question_id", "ranking")


def open_ranked(path: str | os.PathLike, settings: dict | None = None) -> JsonlAppender:
    """The ``ranked.jsonl`` writer: resumable and locked like the predictions writer."""
    return JsonlAppender(path, key="question_id", required=RANKED_KEYS, settings=settings)


def _next_best_first(entry: dict, key: str, previous: float, entry_name: str, order: str, path, line: int) -> float:
    """``entry[key]``, checked to be a number no higher than ``previous`` (the entry before it in a list kept best
    first), for the next entry's check."""
    score = entry.get(key)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
        raise DataError(path, line, f"{entry_name} needs a number '{key}'")
    if score > previous:
        raise DataError(path, line, f"{entry_name} scores higher than the one before it: {order}")
    return score


def _check_ranking(ranking: Any, path, line: int) -> None:
    if not isinstance(ranking, list) or not ranking:
        raise DataError(path, line, "'ranking' must be a non-empty list of {name, logprob}")
    previous, seen = math.inf, set()
    for position, entry in enumerate(ranking, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise DataError(path, line, f"ranking entry {position} needs a non-empty string 'name'")
        # The list's order is the ranking; a list sorted the wrong way would silently score as another model.
        previous = _next_best_first(entry, "logprob", previous, f"ranking entry {position} ({entry['name']!r})",
                                    "rankings are best first", path, line)
        if entry["name"] in seen:
            raise DataError(path, line, f"ranking names {entry['name']!r} twice")
        seen.add(entry["name"])


def read_ranked(path: str | os.PathLike) -> dict[str, tuple[int, list[dict]]]:
    """``question_id -> (line, ranking)``; a duplicate id or a malformed ranking is an error naming the line."""
    out: dict[str, tuple[int, list[dict]]] = {}
    for line, rec in read_jsonl(path, RANKED_KEYS):
        qid = rec["question_id"]
        _check_ranking(rec["ranking"], path, line)
        if qid in out:
            raise DataError(path, line, f"duplicate question_id {qid!r} (first on line {out[qid][0]})")
        out[qid] = (line, rec["ranking"])
    return out


# --------------------------------------------------------------------------------------------- gazetteer
GAZETTEER_COLUMNS = ("street", "district")


@dataclass(frozen=True)
class GazetteerEntry:
    """A gazetteer row: a street, a district, or both (then also an address pair); empty strings where absent."""

    street: str
    district: str


def read_gazetteer(path: str | os.PathLike) -> list[GazetteerEntry]:
    """A CSV with ``street`` and ``district`` columns; each row names at least one of them."""
    path = Path(path)
    entries = []
    for line, raw in _read_csv(path, GAZETTEER_COLUMNS, "gazetteer")[1]:
        entry = GazetteerEntry(*(" ".join((raw[c] or "").split()) for c in GAZETTEER_COLUMNS))
        if not entry.street and not entry.district:
            raise DataError(path, line, "names neither a street nor a district")
        entries.append(entry)
    return entries


def write_gazetteer(path: str | os.PathLike, entries: Iterable[GazetteerEntry]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(GAZETTEER_COLUMNS)
    for line, entry in enumerate(entries, start=2):
        if not entry.street.strip() and not entry.district.strip():
            raise DataError(path, line, "names neither a street nor a district")
        writer.writerow([entry.street, entry.district])
    write_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------------------------- retrieval
# The cross-view retrieval task (docs/retrieval.md): a gallery of geo-tagged satellite tiles and queries (a street
# view or a scene text), each with the one tile it should retrieve. Paths are relative to the city root, as everywhere.
RETRIEVAL_SPLITS = ("train", "val", "test")
RETRIEVAL_QUERY_KINDS = ("image", "text")
GALLERY_KEYS = ("tile", "image", "lat", "lon", "street", "district", "split")
RETRIEVAL_QUERY_KEYS = ("query_id", "kind", "tile", "split", "image", "text", "source")


def _check_coordinates(rec: dict, path, line: int) -> None:
    if rec["lat"] is None and rec["lon"] is None:
        return  # a tile of a dataset without geotags (GeoText-1652): ranked, never measured in metres
    for key, bound in (("lat", 90.0), ("lon", 180.0)):
        value = rec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -bound <= value <= bound:
            raise DataError(path, line, f"{key} {value!r} is not a number in [-{bound:g}, {bound:g}]")


def _check_relative_image(rec: dict, path, line: int) -> None:
    try:
        path_inside_root(rec["image"], "image")
    except ValueError as exc:
        raise DataError(path, line, str(exc)) from None


def _check_gallery_tile(rec: dict, path, line: int) -> None:
    missing = [k for k in GALLERY_KEYS if k not in rec]
    if missing:
        raise DataError(path, line, f"missing key(s) {', '.join(missing)}")
    for key in ("tile", "image"):
        if not isinstance(rec[key], str) or not rec[key].strip():
            raise DataError(path, line, f"{key} must be a non-empty string")
    _check_relative_image(rec, path, line)
    _check_coordinates(rec, path, line)
    if rec["split"] not in RETRIEVAL_SPLITS:
        raise DataError(path, line, f"split {rec['split']!r} not in {RETRIEVAL_SPLITS}")


def _check_retrieval_query(rec: dict, path, line: int) -> None:
    missing = [k for k in RETRIEVAL_QUERY_KEYS if k not in rec]
    if missing:
        raise DataError(path, line, f"missing key(s) {', '.join(missing)}")
    if rec["kind"] not in RETRIEVAL_QUERY_KINDS:
        raise DataError(path, line, f"kind {rec['kind']!r} not in {RETRIEVAL_QUERY_KINDS}")
    if rec["split"] not in RETRIEVAL_SPLITS:
        raise DataError(path, line, f"split {rec['split']!r} not in {RETRIEVAL_SPLITS}")
    # Exactly one of image / text: the query's kind says which, the other is null.
    present, absent = ("image", "text") if rec["kind"] == "image" else ("text", "image")
    if not isinstance(rec[present], str) or not rec[present].strip():
        raise DataError(path, line, f"a {rec['kind']} query needs a non-empty {present}")
    if rec[absent] is not None:
        raise DataError(path, line, f"a {rec['kind']} query has {absent} null, not {rec[absent]!r}")
    if rec["kind"] == "image":
        _check_relative_image(rec, path, line)


def _read_unique(path, key: str, check) -> list[dict]:
    out, seen = [], {}
    for line, rec in read_jsonl(path):
        check(rec, path, line)
        if rec[key] in seen:
            raise DataError(path, line, f"duplicate {key} {rec[key]!r} (first on line {seen[rec[key]]})")
        seen[rec[key]] = line
        out.append(rec)
    return out


def _write_checked(path, records: Iterable[dict], key: str, check) -> None:
    lines, seen = [], set()
    for line, rec in enumerate(records, start=1):
        check(rec, path, line)
        if rec[key] in seen:
            raise DataError(path, line, f"duplicate {key} {rec[key]!r}")
        seen.add(rec[key])
        lines.append(json.dumps(rec, ensure_ascii=False, sort_keys=True))
    write_atomic(path, "".join(line + "\n" for line in lines))


def read_gallery(path: str | os.PathLike) -> list[dict]:
    """``retrieval/gallery.jsonl``: one satellite tile per line, ``tile`` unique."""
    return _read_unique(path, "tile", _check_gallery_tile)


def write_gallery(path: str | os.PathLike, tiles: Iterable[dict]) -> None:
    _write_checked(path, tiles, "tile", _check_gallery_tile)


def read_retrieval_queries(path: str | os.PathLike, gallery: Iterable[dict] | None = None) -> list[dict]:
    """``retrieval/queries.jsonl``: one query per line, ``query_id`` unique; with ``gallery``, every query's ``tile``
    must be one of its tiles (a query whose answer is not in the gallery could never be retrieved)."""
    check = _check_retrieval_query
    if gallery is not None:
        tiles = {t["tile"] for t in gallery}

        def check(rec: dict, path, line: int) -> None:
            _check_retrieval_query(rec, path, line)
            if rec["tile"] not in tiles:
                raise DataError(path, line, f"tile {rec['tile']!r} is not in the gallery")
    return _read_unique(path, "query_id", check)


def write_retrieval_queries(path: str | os.PathLike, queries: Iterable[dict]) -> None:
    _write_checked(path, queries, "query_id", _check_retrieval_query)


# --------------------------------------------------------------------------------------------- view facts
# What each street view of a rendered city shows, in words (the demo city writes it at its root): the view's
# direction relative to the street ("along" it or "across" at the buildings), the road's width, the pavement's and
# the facades' colours, the window style, storeys and parks per side in sight, trees, tram tracks, shop fronts. The
# retrieval data's rule backend writes a street view's scene text from its line, as an LVLM would from the image.
VIEW_FACTS_FILE = "view_facts.jsonl"
VIEW_FACT_KEYS = ("image", "location_id", "view", "road_m", "pavement", "facade", "windows", "levels", "park", "trees",
                  "tram", "shops")
VIEW_DIRECTIONS = ("along", "across")


def _check_view_facts(rec: dict, path, line: int) -> None:
    missing = [k for k in VIEW_FACT_KEYS if k not in rec]
    if missing:
        raise DataError(path, line, f"missing key(s) {', '.join(missing)}")
    _check_relative_image(rec, path, line)
    for key in ("location_id", "pavement", "facade", "windows"):
        if not isinstance(rec[key], str) or not rec[key].strip():
            raise DataError(path, line, f"{key} must be a non-empty string")
    if rec["view"] not in VIEW_DIRECTIONS:
        raise DataError(path, line, f"view {rec['view']!r} not in {VIEW_DIRECTIONS}")
    for key in ("road_m", "trees", "shops"):
        if isinstance(rec[key], bool) or not isinstance(rec[key], int) or rec[key] < 0:
            raise DataError(path, line, f"{key} {rec[key]!r} is not a whole number from 0")
    if not isinstance(rec["tram"], bool):
        raise DataError(path, line, f"tram {rec['tram']!r} is not true or false")
    sides = 2 if rec["view"] == "along" else 1  # an along view sees both sides of the street, an across view one
    levels, park = rec["levels"], rec["park"]
    if not isinstance(levels, list) or len(levels) != sides or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in levels):
        raise DataError(path, line, f"levels {levels!r}: an {rec['view']} view needs {sides} storey count(s) from 1")
    if not isinstance(park, list) or len(park) != sides or not all(isinstance(v, bool) for v in park):
        raise DataError(path, line, f"park {park!r}: an {rec['view']} view needs {sides} true/false value(s)")


def read_view_facts(path: str | os.PathLike) -> list[dict]:
    """``view_facts.jsonl``: one street view per line, ``image`` unique (``VIEW_FACT_KEYS``)."""
    return _read_unique(path, "image", _check_view_facts)


def write_view_facts(path: str | os.PathLike, facts: Iterable[dict]) -> None:
    _write_checked(path, facts, "image", _check_view_facts)


# --------------------------------------------------------------------------------------------- retrieved tiles
# eval/retrieve.py's per-query output: the query, its true tile and that tile's rank, the best tiles (with their
# names, so retrieved candidates need no other file) and how far the first one's centre lies from the truth.
RETRIEVED_KEYS = ("query_id", "kind", "image", "tile", "rank", "metres", "top")


def _check_retrieved(rec: dict, path, line: int) -> None:
    missing = [k for k in RETRIEVED_KEYS if k not in rec]
    if missing:
        raise DataError(path, line, f"missing key(s) {', '.join(missing)}")
    if rec["kind"] not in RETRIEVAL_QUERY_KINDS:
        raise DataError(path, line, f"kind {rec['kind']!r} not in {RETRIEVAL_QUERY_KINDS}")
    if isinstance(rec["rank"], bool) or not isinstance(rec["rank"], int) or rec["rank"] < 1:
        raise DataError(path, line, f"rank {rec['rank']!r} is not a whole number from 1")
    metres = rec["metres"]
    if metres is not None and (isinstance(metres, bool) or not isinstance(metres, (int, float)) or metres < 0):
        raise DataError(path, line, f"metres {metres!r} is neither null nor a distance")
    top = rec["top"]
    if not isinstance(top, list) or not top:
        raise DataError(path, line, "'top' must be a non-empty list of {tile, score, street, district}")
    previous = math.inf
    for position, entry in enumerate(top, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("tile"), str) or \
                not all(isinstance(entry.get(k), str) for k in ("street", "district")):
            raise DataError(path, line, f"top entry {position} needs string 'tile', 'street' and 'district'")
        previous = _next_best_first(entry, "score", previous, f"top entry {position} ({entry['tile']!r})",
                                    "best first", path, line)


def read_retrieved(path: str | os.PathLike) -> list[dict]:
    """``retrieved.jsonl``: one retrieved query per line, ``query_id`` unique, ``top`` best first."""
    return _read_unique(path, "query_id", _check_retrieved)


def write_retrieved(path: str | os.PathLike, records: Iterable[dict]) -> None:
    _write_checked(path, records, "query_id", _check_retrieved)


# --------------------------------------------------------------------------------------------- rewards
# eval/score.py --rewards: the street-level reward of each question's reply (addressvlm/answering/reward.py).
REWARD_KEYS = ("question_id", "reward")


def _check_reward(rec: dict, path, line: int) -> None:
    missing = [k for k in REWARD_KEYS if k not in rec]
    if missing:
        raise DataError(path, line, f"missing key(s) {', '.join(missing)}")
    if not isinstance(rec["question_id"], str) or not rec["question_id"]:
        raise DataError(path, line, "question_id must be a non-empty string")
    value = rec["reward"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise DataError(path, line, f"reward {value!r} is not a number in [0, 1]")


def read_rewards(path: str | os.PathLike) -> dict[str, float]:
    """``rewards.jsonl``: ``question_id -> reward``, one unique question per line."""
    return {rec["question_id"]: rec["reward"] for rec in _read_unique(path, "question_id", _check_reward)}


def write_rewards(path: str | os.PathLike, rewards: Iterable[dict]) -> None:
    _write_checked(path, rewards, "question_id", _check_reward)


# --------------------------------------------------------------------------------------------- GRPO's reward curve
# <output_dir>/reward_curve.jsonl of a stage-3 run (addressvlm/runs/grpo.py): per logged step, the mean reward of the
# step's rollouts, their spread and the KL to the stage-2 model, as TRL logged them.
REWARD_CURVE_KEYS = ("step", "reward")
REWARD_CURVE_OPTIONAL = ("reward_std", "kl")


def _check_reward_curve_row(rec: dict, path, line: int) -> None:
    missing = [k for k in REWARD_CURVE_KEYS if k not in rec]
    if missing:
        raise DataError(path, line, f"missing key(s) {', '.join(missing)}")
    unknown = sorted(set(rec) - set(REWARD_CURVE_KEYS) - set(REWARD_CURVE_OPTIONAL))
    if unknown:
        raise DataError(path, line, f"unknown key(s) {', '.join(unknown)}")
    if isinstance(rec["step"], bool) or not isinstance(rec["step"], int) or rec["step"] < 1:
        raise DataError(path, line, f"step {rec['step']!r} is not a positive whole number")
    for key in ("reward", *REWARD_CURVE_OPTIONAL):
        value = rec.get(key)
        if key in rec and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
            raise DataError(path, line, f"{key} {value!r} is not a number")


def read_reward_curve(path: str | os.PathLike) -> list[dict]:
    """``reward_curve.jsonl``: one logged step per line, steps unique."""
    return _read_unique(path, "step", _check_reward_curve_row)


def write_reward_curve(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    _write_checked(path, rows, "step", _check_reward_curve_row)
