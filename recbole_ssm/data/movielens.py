"""GroupLens MovieLens: ``ml-1m.zip`` / ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``,
latin-1) with ``movies.dat`` / ``users.dat``, and the ml-20m / ml-25m CSV layout
(``ratings.csv`` with header ``userId,movieId,rating,timestamp``, ``movies.csv``).

``--input`` may be the zip, the unpacked folder, or the ratings file; movies/users files
next to the ratings file become ``.item`` / ``.user``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from typing import Callable, Iterator

from recbole_ssm.data.reading import (
    BadLine,
    DataFormatError,
    Interactions,
    LineReader,
    SideResult,
    SourceData,
    iter_lines,
    open_binary,
)
from recbole_ssm.data.writing import cell, write_table
from recbole_ssm.errors import UsageError

DEFAULT_MAX_LEN = 200
CSV_HEADER = "userId,movieId,rating,timestamp"
_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


class Files:
    """Where the ratings / movies / users files are: plain paths or members of one zip."""

    def __init__(self, path: str) -> None:
        self.zip: zipfile.ZipFile | None = None
        self.names: dict[str, str] = {}
        if not os.path.exists(path):
            raise UsageError(f"input not found: {path} (check --input)")
        if os.path.isdir(path):
            listing = {n: os.path.join(path, n) for n in os.listdir(path)}
        elif zipfile.is_zipfile(path):
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as exc:
                raise DataFormatError(f"{path} is not a readable zip ({exc}): download it again") from None
            listing = {}
            for member in sorted(self.zip.namelist(), key=len):
                listing.setdefault(os.path.basename(member), member)
        else:
            folder, base = os.path.split(path)
            listing = {n: os.path.join(folder, n) for n in os.listdir(folder or ".")
                       if n in ("movies.dat", "users.dat", "movies.csv")}
            if base in ("ratings.dat", "ratings.csv"):
                listing[base] = path
            else:  # any other name: the first line tells the layout
                csv_layout = self._first_line(path).startswith(b"userId,")
                listing["ratings.csv" if csv_layout else "ratings.dat"] = path
        self.label = path
        for key in ("ratings.dat", "ratings.csv", "movies.dat", "users.dat", "movies.csv"):
            if key in listing:
                self.names[key] = listing[key]
        if "ratings.dat" not in self.names and "ratings.csv" not in self.names:
            raise DataFormatError(f"{path} holds no ratings.dat or ratings.csv: pass ml-1m.zip, its folder, "
                                  "or the ratings file as --input")

    @staticmethod
    def _first_line(path: str) -> bytes:
        with open_binary(path) as f:
            return f.readline()

    def display(self, key: str) -> str:
        return f"{self.label}:{self.names[key]}" if self.zip else self.names[key]

    def lines(self, key: str) -> Iterator[tuple[int, bytes]]:
        if self.zip:
            return iter_lines(self.display(key), self.zip.open(self.names[key]))
        return iter_lines(self.names[key])


def _rating_row(parts: list[str]):
    """(user, item, rating, timestamp) from four text fields; BadLine where they are malformed."""
    user, item, rating, ts = (p.strip() for p in parts)
    if not user or not item:
        raise BadLine("empty id")
    try:
        r = float(rating)
    except ValueError:
        raise BadLine("non-numeric rating") from None
    try:
        t = int(ts)
    except ValueError:
        raise BadLine("non-numeric timestamp") from None
    return user, item, r, t


def _parse_dat(n: int, raw: bytes):
    parts = raw.decode("latin-1").split("::")
    if len(parts) != 4:
        raise BadLine("not 4 fields separated by '::'")
    return _rating_row(parts)


def _parse_csv(n: int, raw: bytes):
    text = raw.decode("utf-8", "replace")
    if n == 1 and text.strip().replace(" ", "") == CSV_HEADER:
        return None
    if n == 1:
        raise BadLine(f"header is not {CSV_HEADER}")
    parts = text.split(",")
    if len(parts) != 4:
        raise BadLine("not 4 comma-separated fields")
    return _rating_row(parts)


def read(path: str, table: Interactions) -> SourceData:
    """Read MovieLens ratings into ``table``; movies/users files become side files."""
    files = Files(path)
    key = "ratings.dat" if "ratings.dat" in files.names else "ratings.csv"
    reader = LineReader("movielens", files.display(key), table)
    reader.run(_parse_dat if key == "ratings.dat" else _parse_csv, files.lines(key))

    def side(folder, name, table, order) -> SideResult:
        return write_side(files, folder, name, table, order)

    has_side = any(k in files.names for k in ("movies.dat", "users.dat", "movies.csv"))
    return SourceData(readers=[reader], has_rating=True, ts_scale=1, max_len=DEFAULT_MAX_LEN,
                      side=side if has_side else None)


def _movie_row(movie_id: str, title: str, genres: str) -> list[str]:
    m = _YEAR.match(title.strip())
    title, year = (m.group(1), m.group(2)) if m else (title.strip(), "")
    genre = " ".join(g.strip().replace(" ", "_") for g in genres.split("|") if g.strip())
    return [cell(movie_id), cell(title), cell(year), cell(genre)]


def _side_file(files: Files, key: str, codes: dict, kept: set, make_row: Callable, n_fields: int,
               decode: str) -> tuple[list, LineReader, dict]:
    reader = LineReader("movielens " + key, files.display(key), Interactions())
    rows: list = []
    state = {"unused": 0}
    is_csv = key.endswith(".csv")

    def parse(n: int, raw: bytes) -> list | None:
        """The line's output rows: one for a kept id, none for another; None for the header."""
        text = raw.decode(decode, "replace")
        if is_csv:
            if n == 1:
                return None  # header
            try:
                parts = next(csv.reader(io.StringIO(text)))
            except (csv.Error, StopIteration):
                raise BadLine("bad CSV") from None
        else:
            parts = text.split("::")
        if len(parts) != n_fields or not parts[0].strip():
            raise BadLine(f"not {n_fields} fields")
        code = codes.get(parts[0].strip())
        if code is None or code not in kept:
            state["unused"] += 1
            return []
        return [make_row(*parts)]

    def keep(found: list) -> int:
        rows.extend(found)
        return len(found)

    reader.run(parse, files.lines(key), add=keep)
    return rows, reader, state


def write_side(files: Files, folder, name: str, table: Interactions, order) -> SideResult:
    """``.item`` from movies.dat / movies.csv and ``.user`` from users.dat, for kept ids only."""
    u, i = table.columns()[0][order], table.columns()[1][order]
    out = SideResult(files=[], notes=[], load_col={}, readers=[])
    movies = next((k for k in ("movies.dat", "movies.csv") if k in files.names), None)
    if movies:
        kept = set(i.tolist())
        rows, reader, state = _side_file(files, movies, table.item_codes, kept, _movie_row, 3,
                                         "latin-1" if movies.endswith(".dat") else "utf-8")
        header = ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"]
        write_table(folder.path(f"{name}.item"), header, rows)
        out.files.append(f"{name}.item")
        out.load_col["item"] = ["item_id", "movie_title", "release_year", "genre"]
        out.readers.append(reader)
        out.notes.append(f"{name}.item: {len(rows)} movies; {state['unused']} rows for movies not in the data"
                         " "
                         f"(not written), {reader.bad.count} malformed (skipped), "
                         f"{len(kept) - len(rows)} kept items without a movies row")
        if reader.bad.count:
            out.notes.append("  " + reader.bad.describe())
    if "users.dat" in files.names:
        kept = set(u.tolist())

        def user_row(uid, gender, age, occupation, zipcode):
            return [cell(uid.strip()), cell(age.strip()), cell(gender.strip()), cell(occupation.strip()),
                    cell(zipcode.strip())]

        rows, reader, state = _side_file(files, "users.dat", table.user_codes, kept, user_row, 5, "latin-1")
        write_table(folder.path(f"{name}.user"), ["user_id:token", "age:token", "gender:token",
                                                  "occupation:token", "zip_code:token"], rows)
        out.files.append(f"{name}.user")
        out.load_col["user"] = ["user_id", "age", "gender", "occupation", "zip_code"]
        out.readers.append(reader)
        out.notes.append(f"{name}.user: {len(rows)} users; {state['unused']} rows for users not in the data "
                         f"(not written), {reader.bad.count} malformed (skipped)")
        if reader.bad.count:
            out.notes.append("  " + reader.bad.describe())
    return out
