"""Reading raw interaction files: streaming lines (plain or gzip), guessing the source, parsing
with bad-line accounting, and the compact columns rows are held in.

Rows are held as four compact columns (user code int32, item code int32, rating float32,
timestamp int64) plus one interned string per distinct user and item, so memory grows with
the number of interactions and ids kept, never with the size of the raw file.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import numpy as np

from recbole_ssm.errors import UsageError

SOURCES = ("movielens", "amazon2023", "seqtext", "csv")
FIRST_BAD_SHOWN = 5
SNIFF_LINES = 20  # a file whose first 20 data lines all fail to parse is the wrong source


class DataFormatError(UsageError):
    """The input file is not what the chosen source reads, or holds too many malformed lines."""


def open_binary(path: str) -> BinaryIO:
    """Open ``path`` for reading bytes, unpacking gzip by its magic number (not its name)."""
    if not os.path.isfile(path):
        raise UsageError(f"input file not found: {path} (check --input)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"PK\x03\x04" and not path.endswith(".zip"):
        raise DataFormatError(f"{path} is a zip archive: unpack it, or pass the .zip to the movielens source")
    return open(path, "rb")


def iter_lines(path: str, stream: BinaryIO | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number from 1, raw line without the newline)``; corrupt gzip is one clear error."""
    f = stream if stream is not None else open_binary(path)
    n = 0
    try:
        with f:
            for n, raw in enumerate(f, 1):
                yield n, raw.rstrip(b"\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(
            f"{path} is truncated or not valid gzip after line {n} ({exc}): download it again"
        ) from None


def guess_source(line: bytes) -> str:
    """Which source a data line looks like (used only to word the wrong-source error)."""
    text = line.strip()
    if text.startswith(b"{"):
        return "amazon2023"
    if b"::" in text or re.match(rb"^\s*userId,movieId,rating", text):
        return "movielens"
    if b"," in text or b"\t" in text or b";" in text:
        return "csv"
    return "seqtext"


LOOKS_LIKE = {"csv": "a CSV file (comma, tab or semicolon separated, with a header line)"}


class BadLine(ValueError):
    """A malformed input line; the message says why (e.g. "non-numeric rating").

    ``kind`` is what the summary counts it under (default: the message); a message that quotes
    the line's own value gives a fixed ``kind`` so the count of reasons stays small.
    """

    def __init__(self, reason: str, kind: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind or reason


@dataclass
class BadLines:
    """Malformed lines of one input file: how many, why, and the first few line numbers."""

    path: str
    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    first: list = field(default_factory=list)
    unit: str = "line"  # "row" where rows are not lines (Parquet)

    def add(self, line_no: int, reason: str, kind: str | None = None) -> None:
        self.count += 1
        self.reasons[kind or reason] += 1
        if len(self.first) < FIRST_BAD_SHOWN:
            self.first.append((line_no, reason))

    def describe(self) -> str:
        where = ", ".join(f"{n} ({why})" for n, why in self.first)
        more = ", ..." if self.count > len(self.first) else ""
        return f"{self.count} malformed {self.unit}(s) in {self.path}: {self.unit} {where}{more}"

    def as_dict(self) -> dict:
        return {"file": self.path, "count": self.count, "reasons": dict(self.reasons),
                "first": [{"line": n, "reason": why} for n, why in self.first]}


class Interactions:
    """Growing columns of (user, item, rating, timestamp); ids are interned once."""

    def __init__(self) -> None:
        self.user_codes: dict[str, int] = {}
        self.item_codes: dict[str, int] = {}
        self.users: list[str] = []
        self.items: list[str] = []
        self.u = array("i")
        self.i = array("i")
        self.r = array("f")
        self.t = array("q")

    def __len__(self) -> int:
        return len(self.u)

    def add(self, user: str, item: str, rating: float, ts: int) -> None:
        code = self.user_codes.get(user)
        if code is None:
            code = self.user_codes[user] = len(self.users)
            self.users.append(user)
        self.u.append(code)
        code = self.item_codes.get(item)
        if code is None:
            code = self.item_codes[item] = len(self.items)
            self.items.append(item)
        self.i.append(code)
        self.r.append(rating)
        self.t.append(ts)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Zero-copy numpy views of the four columns."""
        return (np.frombuffer(self.u, dtype=np.int32), np.frombuffer(self.i, dtype=np.int32),
                np.frombuffer(self.r, dtype=np.float32), np.frombuffer(self.t, dtype=np.int64))


def valid_id(value: object) -> str | None:
    """``value`` as an id string, or None when it is empty or holds a tab/newline."""
    if type(value) is not str:  # one test for the usual case: read once a row and id
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            return None
        value = str(value)
    value = value.strip()
    if not value or "\t" in value or "\n" in value or "\r" in value:
        return None
    return value


class LineReader:
    """Reads one input file line by line, keeping the accounting.

    ``parse(line_no, raw)`` returns what a data line holds, None for a line that is not data (a
    header), and raises :class:`BadLine` for a malformed line. ``add(result)`` stores a result
    and returns how many rows it wrote; by default the result is one ``(user, item, rating, ts)``
    row of the :class:`Interactions` table.
    """

    def __init__(self, source: str, path: str, table: Interactions) -> None:
        self.source = source
        self.path = path
        self.table = table
        self.bad = BadLines(path)
        self.lines = 0
        self.blank = 0
        self.rows = 0
        self.skipped = 0  # header lines

    def _add_interaction(self, row: tuple) -> int:
        self.table.add(*row)
        return 1

    def run(self, parse: Callable[[int, bytes], object], lines: Iterator[tuple[int, bytes]],
            add: Callable[[object], int] | None = None) -> None:
        add = add or self._add_interaction
        first_line: bytes | None = None
        good = 0
        for n, raw in lines:
            self.lines = n
            if not raw or (isinstance(raw, bytes) and not raw.strip()):  # raw: a line, or a parsed record
                self.blank += 1
                continue
            if first_line is None:
                first_line = raw
            try:
                out = parse(n, raw)
            except BadLine as why:
                self.bad.add(n, str(why), why.kind)
                if good == 0 and self.bad.count >= SNIFF_LINES:
                    self.wrong_source(first_line)
                continue
            if out is None:
                self.skipped += 1
                continue
            good += 1
            self.rows += add(out)
        if good == 0:
            if first_line is None:
                self.no_data()
            self.wrong_source(first_line)

    def no_data(self) -> None:
        raise DataFormatError(f"{self.path} holds no data lines: check --input")

    def wrong_source(self, first_line: bytes) -> None:
        guess = guess_source(first_line)
        snippet = first_line[:60].decode("utf-8", "replace")
        hint = f"use `prepare {guess}`" if guess in SOURCES and guess != self.source else "check the file"
        why = self.bad.first[0][1] if self.bad.first else "no data"
        raise DataFormatError(
            f"{self.path} does not look like {self.source} input (line 1: {snippet!r}: {why}); "
            f"it looks like {LOOKS_LIKE.get(guess, guess)}: {hint}"
        )

    def data_lines(self) -> int:
        return self.lines - self.blank - self.skipped

    def check(self, max_bad: float) -> None:
        """Fail (writing nothing) when more than ``max_bad`` of the data lines are malformed."""
        total = max(self.data_lines(), 1)
        if self.bad.count and self.bad.count / total > max_bad:
            raise DataFormatError(
                f"{self.bad.describe()}: {self.bad.count / total:.4%} of {total} lines is over "
                f"--max-bad {max_bad:g}; fix the file or raise --max-bad"
            )

    def as_dict(self) -> dict:
        return {"file": self.path, "unit": self.bad.unit, "lines": self.lines, "data_lines": self.data_lines(),
                "header_lines": self.skipped, "blank_lines": self.blank, "rows": self.rows,
                "malformed": self.bad.as_dict()}


def parse_json(raw: bytes) -> dict:
    """A JSON object; BadLine saying why the line is not one."""
    try:
        obj = json.loads(raw)
    except ValueError:
        raise BadLine("bad JSON") from None
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object")
    return obj


def to_int_timestamp(value: object) -> int | None:
    """An integer timestamp from an int, an integral float or a numeric string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) < 2**62 else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                return None
            return int(f) if f == f and abs(f) < 2**62 else None
    return None


def to_float(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


@dataclass
class SideResult:
    """What a side file (``.item`` / ``.user``) step wrote and counted."""

    files: list
    notes: list
    load_col: dict
    readers: list


@dataclass
class SourceData:
    """What a source read: its readers' accounting, and how to write the rest.

    ``side(folder, name, table, order)`` writes ``.item`` / ``.user`` files for the kept rows.
    """

    readers: list
    has_rating: bool
    ts_scale: int  # 1: seconds (or positions); 1000: milliseconds, written as seconds.mmm
    max_len: int
    side: Callable[..., SideResult] | None = None
    whole_seconds: bool = False  # ts_scale 1000, but plain seconds when every kept time is a whole second


def to_whole_seconds(table: Interactions, order: np.ndarray) -> bool:
    """Divide the millisecond timestamps by 1000 in place when every row in ``order`` is a whole
    second; return whether it did."""
    t = table.columns()[3]
    if (t[order] % 1000).any():
        return False
    t //= 1000
    return True
