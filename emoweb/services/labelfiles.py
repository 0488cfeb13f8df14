"""Label files: a profile's current labels as CSV or JSON, and reading such a file back.

Only the format lives here; matching rows to clips and storing corrections is the service's job.
Clips are named by content hash (sha256), so a file exported from one machine applies on another.
A CSV file is opened in spreadsheets: a cell that would start a formula is written with a leading
apostrophe (OWASP's CSV-injection advice) and read back without it, so import returns exactly what
was exported. Values read are passed through `safetext.clean` (a JSON file may spell a lone surrogate).
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from emoweb.errors import EmoWebError
from emoweb.safetext import clean

FIELDS = ("sha256", "original_name", "label", "annotator", "note", "created")
FORMATS = ("csv", "json")
# what makes a spreadsheet read a cell as a formula (OWASP: = + - @ tab CR, and their full-width forms)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
GUARD = "'"  # a leading apostrophe: the cell is text


def inert_cell(value: str) -> str:
    """A CSV cell no spreadsheet runs: a formula start gets the guard, and so does a value that already
    starts with it, so that `restore_cell` gives back exactly `value`."""
    return GUARD + value if value.startswith((*FORMULA_START, GUARD)) else value


def restore_cell(value: str) -> str:
    """The value `inert_cell` was given."""
    return value[len(GUARD):] if value.startswith(GUARD) else value


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise EmoWebError(f"unknown label file format {fmt!r}: use csv or json")


def render(profile: str, labels: Sequence[str], rows: list[dict[str, str]], fmt: str = "csv") -> str:
    """`rows` (dicts with `FIELDS`) as a label file; JSON also names the profile and its label set."""
    _check(fmt)
    if fmt == "json":
        return json.dumps({"profile": profile, "labels": list(labels), "rows": rows}, ensure_ascii=False, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\r\n")  # RFC 4180: a CR in a value is quoted too
    writer.writeheader()
    writer.writerows({k: inert_cell(str(v)) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def parse(text: str, fmt: str = "csv") -> list[tuple[str, dict[str, str]]]:
    """The file's rows as (where, string dict) pairs, missing values as ''. `where` names the row as a person
    finds it: "line N" in a CSV file (the line its record ends on, the header being line 1: a record's only line
    unless a quoted value spans lines), "row N" of a
    JSON file's rows. A file that is not a label file is refused with one line saying why."""
    _check(fmt)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EmoWebError(f"not a JSON label file: {exc.msg} at line {exc.lineno}") from None
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise EmoWebError("not a JSON label file: expected {\"rows\": [{\"sha256\": ..., \"label\": ...}, ...]}")
        # a row that is no object is refused as a row (by the importer: no sha256), as a CSV's bad line is
        placed = [(f"row {number}", row if isinstance(row, dict) else {}) for number, row in enumerate(rows, start=1)]
    else:
        reader = csv.DictReader(io.StringIO(text))
        missing = {"sha256", "label"} - set(reader.fieldnames or ())
        if missing:
            raise EmoWebError(f"not a CSV label file: missing column(s) {', '.join(sorted(missing))}")
        placed = [(f"line {reader.line_num}", {k: restore_cell(v) if isinstance(v, str) else v for k, v in row.items()})
                  for row in reader]  # line_num: read when the record has been read (blank lines skipped)
    return [(where, {clean(k): "" if v is None else clean(str(v)) for k, v in r.items() if k is not None}) for where, r in placed]
