"""Your own event file: delimited text (comma, tab or semicolon, optionally gzipped) or Parquet,
one interaction a row, with a header naming the user, item and time columns.

The columns are found by name (``user_id``, ``item_id``, ``timestamp`` and their usual aliases,
case-insensitive, RecBole's ``name:type`` headers too) or given with ``--user-col``,
``--item-col``, ``--time-col``; ``--rating-col`` adds a rating. Times are epoch seconds or
milliseconds (a number of absolute value 1e11 or more is milliseconds, below it seconds) or
ISO-8601 text (naive times are UTC). They are kept as int64 milliseconds and written as seconds:
plain integers when every kept time is a whole second, else with three decimals. Text is read
as a stream and Parquet in record batches; only the compact columns of
:class:`~recbole_ssm.data.reading.Interactions` are held.
"""

from __future__ import annotations

import codecs
import csv
import os
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

from recbole_ssm.data.reading import (
    SOURCES,
    BadLine,
    DataFormatError,
    Interactions,
    LineReader,
    SourceData,
    guess_source,
    iter_lines,
    open_binary,
    to_float,
    valid_id,
)
from recbole_ssm.errors import UsageError

DEFAULT_MAX_LEN = 50
NAMES = {
    "user": ("user_id", "user", "userId", "uid", "customer_id", "visitorid"),
    "item": ("item_id", "item", "itemId", "movieId", "product_id", "asin", "parent_asin", "itemid"),
    "time": ("timestamp", "time", "ts", "datetime", "event_time", "date"),
}
DELIMITERS = (",", "\t", ";")
MS_FROM = 10**11  # a number of absolute value 1e11 or more is milliseconds, below it seconds
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z; past it (e.g. microseconds) is not a time
PARQUET_BATCH = 65536
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)


# ---------------------------------------------------------------------------------------
# values


def _ms_in_range(ms: int) -> int | None:
    return ms if -MAX_MS <= ms <= MAX_MS else None


def number_to_ms(value: int | float) -> int | None:
    """Epoch milliseconds from a number of seconds or milliseconds (``|value| >= 1e11``: ms)."""
    if isinstance(value, float):
        if value != value or abs(value) > 1e16:  # NaN, inf, or far past any date
            return None
        return _ms_in_range(round(value if abs(value) >= MS_FROM else value * 1000))
    return _ms_in_range(value if abs(value) >= MS_FROM else value * 1000)


def iso_to_ms(text: str) -> int | None:
    """Epoch milliseconds (rounded) from ISO-8601 text: a date, or a date and time with an optional
    ``Z`` / ``+HH:MM`` offset; naive times are UTC. None when it is not one."""
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not take Z
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    us = (dt - (_EPOCH if dt.tzinfo is not None else _EPOCH_NAIVE)) // _US
    return _ms_in_range((us + 500) // 1000)


def to_ms(value: object) -> int | None:
    """Epoch milliseconds from a time field (text or number); None when it is not a time."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) >= 10 and text[4] == "-":  # 2024-01-05...
            return iso_to_ms(text)
        try:
            return number_to_ms(int(text))
        except ValueError:
            try:
                return number_to_ms(float(text))
            except ValueError:
                return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number_to_ms(value)
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------
# the header


def _bare(name: str) -> str:
    """A header field without RecBole's ``:type`` suffix and surrounding spaces."""
    name = name.strip()
    base, colon, kind = name.rpartition(":")
    return base.strip() if colon and base and kind.strip().isidentifier() else name


def find_columns(header: list[str], given: dict, where: str, original: bytes = b"") -> dict[str, int]:
    """The positions of the user, item, time (and rating) columns in ``header``.

    ``given`` maps ``user`` / ``item`` / ``time`` / ``rating`` to a name from the command line
    (matched exactly, with or without a ``:type`` suffix) or None (the usual names are looked for,
    case-insensitively, the first in :data:`NAMES` order winning). ``where`` starts the messages.
    """
    bare = [_bare(h) for h in header]
    folded = [b.casefold() for b in bare]
    shown = ", ".join(bare[:20]) + (", ..." if len(bare) > 20 else "")
    found: dict[str, int] = {}
    for role in ("user", "item", "time", "rating"):
        name = given.get(role)
        if name is not None:
            hits = [k for k, (h, b) in enumerate(zip(header, bare)) if name in (h.strip(), b)]
            if not hits:
                raise DataFormatError(f"{where}: no column {name!r} (--{role}-col; columns: {shown}): "
                                      "give a name from the header, exactly as written")
            found[role] = hits[0]
        elif role != "rating":
            hit = next((folded.index(n.casefold()) for n in NAMES[role] if n.casefold() in folded), None)
            if hit is None:
                guess = guess_source(original) if original else "csv"
                other = guess in SOURCES and guess != "csv"
                hint = f"; it looks like {guess} input: use `prepare {guess}`" if other else ""
                raise DataFormatError(f"{where}: no {role} column (looked for {', '.join(NAMES[role])}; "
                                      f"columns: {shown}): name it with --{role}-col{hint}")
            found[role] = hit
    seen: dict[int, str] = {}
    for role, k in found.items():
        if k in seen:
            raise UsageError(f"{where}: the {seen[k]} and {role} columns are both {bare[k]!r}: "
                             f"name another with --{role}-col")
        seen[k] = role
    return found


def sniff_delimiter(header: str) -> str:
    """The one of comma, tab and semicolon that splits ``header`` (outside quotes) into the most fields."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts, key=counts.__getitem__)  # a tie goes to the first: comma, tab, semicolon
    return best if counts[best] else ","


# ---------------------------------------------------------------------------------------
# the two layouts: records of (user, item, time[, rating]) fields


class EventReader(LineReader):
    """The accounting of one event file; its errors speak of columns, not of other sources."""

    def __init__(self, path: str, table: Interactions, unit: str) -> None:
        super().__init__("csv", path, table)
        self.bad.unit = unit

    def no_data(self) -> None:
        raise DataFormatError(f"{self.path} has a header but no data {self.bad.unit}s: check --input")

    def wrong_source(self, first_line) -> None:
        n, why = self.bad.first[0]
        unit = self.bad.unit
        raise DataFormatError(f"{self.path}: no data {unit} could be read ({self.bad.count} tried; {unit} {n}: {why}): "
                              "check the columns (--user-col, --item-col, --time-col) and the file")


class TextEvents:
    """A delimited text file: the header, then records of the chosen columns with their line numbers."""

    def __init__(self, path: str, given: dict) -> None:
        self.path = path
        self.lines = iter_lines(path)
        self.line = 0  # the last physical line read
        self.bad_utf8 = 0  # the last line that was not UTF-8
        self.blank = 0
        header = None
        for n, raw in self.lines:
            self.line = n
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if raw.strip():
                header = raw
                break
            self.blank += 1
        if header is None:
            raise DataFormatError(f"{path} is empty: it needs a header line naming the user, item and time "
                                  "columns (e.g. user_id,item_id,timestamp): check --input")
        text = header.decode("utf-8", "replace")
        self.delimiter = sniff_delimiter(text)
        self.header = next(csv.reader([text], delimiter=self.delimiter))
        self.width = len(self.header)
        self.columns = find_columns(self.header, given, f"{path}, line {n}", header)

    def _decoded(self) -> Iterator[str]:
        for n, raw in self.lines:
            self.line = n
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_utf8 = n
                text = raw.decode("utf-8", "replace")
            yield text + "\n"  # a quoted field across lines keeps its newline (and is refused as an id)

    def records(self) -> Iterator[tuple[int, list]]:
        """``(first line of the record, its fields)``; a blank line gives no fields."""
        end = self.line
        rows = csv.reader(self._decoded(), delimiter=self.delimiter)
        while True:
            try:
                fields = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataFormatError(f"{self.path}, line {self.line}: {exc} (an unclosed quote?): "
                                      "fix the file") from None
            start, end = end + 1, self.line
            if len(fields) == 1 and not fields[0].strip():
                fields = []
            yield start, fields

    def check(self, n: int, fields: list) -> None:
        """BadLine for a record that is not UTF-8 or has another field count than the header."""
        if self.bad_utf8 >= n:
            raise BadLine("not UTF-8")
        if len(fields) != self.width:
            raise BadLine(f"{len(fields)} fields, the header has {self.width}", "wrong field count")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError("reading Parquet needs pyarrow: pip install pyarrow (or the [parquet] extra)") from None
    return pyarrow, pyarrow.parquet


_UNIT_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}


class ParquetEvents:
    """A Parquet file read in record batches of the chosen columns; row numbers stand for lines."""

    def __init__(self, path: str, given: dict) -> None:
        self.path = path
        self.pa, pq = _pyarrow()
        try:
            self.file = pq.ParquetFile(path)
            schema = self.file.schema_arrow
        except (self.pa.ArrowException, OSError) as exc:
            raise DataFormatError(f"{path} is not a readable Parquet file ({exc}): check --input") from None
        self.header = list(schema.names)
        self.width = len(self.header)
        self.columns = find_columns(self.header, given, path)
        self.names = [self.header[k] for k in self.columns.values()]
        time_type = schema.field(self.columns["time"]).type
        self.time_ms = self._time_unit(time_type)
        for role in ("user", "item"):  # the id columns' types are checked here, before reading
            kind = schema.field(self.columns[role]).type
            if not (self._is_text(kind) or self.pa.types.is_integer(kind)):
                raise DataFormatError(f"{path}: the {role} column {self.header[self.columns[role]]!r} is {kind}: "
                                      "ids must be text or integers")

    def _is_text(self, kind) -> bool:
        t = self.pa.types
        return (t.is_string(kind) or t.is_large_string(kind)
                or (t.is_dictionary(kind) and (t.is_string(kind.value_type) or t.is_large_string(kind.value_type))))

    def _time_unit(self, kind) -> tuple | None:
        """(integer type, multiply, divide) to epoch ms for a timestamp / date column; None for numbers and
        text (the seconds / milliseconds rule)."""
        t = self.pa.types
        if t.is_timestamp(kind):
            return (self.pa.int64(), *_UNIT_MS[kind.unit])
        if t.is_date32(kind):
            return (self.pa.int32(), 86_400_000, 1)
        if t.is_date64(kind):
            return (self.pa.int64(), 1, 1)
        if t.is_integer(kind) or t.is_floating(kind) or self._is_text(kind):
            return None
        raise DataFormatError(f"{self.path}: the time column {self.header[self.columns['time']]!r} is {kind}: "
                              "use a timestamp, date, number or ISO-8601 text column")

    def _values(self, column, role: str) -> list:
        if self.pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if role == "time" and self.time_ms is not None:
            kind, mul, div = self.time_ms
            ints = column.cast(kind).to_pylist()
            if div == 1:
                return [None if v is None else v * mul for v in ints]
            half = div // 2
            return [None if v is None else (v + half) // div for v in ints]
        return column.to_pylist()

    def records(self) -> Iterator[tuple[int, list]]:
        """``(row number from 1, [user, item, time(, rating)])``, one batch of rows in memory at a time."""
        roles = list(self.columns)
        n = 0
        try:
            for batch in self.file.iter_batches(columns=self.names, batch_size=PARQUET_BATCH):
                values = [self._values(batch.column(k), role) for k, role in enumerate(roles)]
                for row in zip(*values):
                    n += 1
                    yield n, row
        except (self.pa.ArrowException, OSError) as exc:
            raise DataFormatError(f"{self.path}: cannot read Parquet after row {n} ({exc}): check the file") from None

    def check(self, n: int, fields) -> None:
        return None


def is_parquet(path: str) -> bool:
    """By the ``PAR1`` magic number or a ``.parquet`` name."""
    if path.lower().endswith((".parquet", ".pq")):
        return True
    with open_binary(path) as f:
        return f.read(4) == b"PAR1"


# ---------------------------------------------------------------------------------------
# reading


def read(path: str, table: Interactions, columns: dict | None = None) -> SourceData:
    """Read one event file into ``table``; ``columns`` maps user / item / time / rating to names
    given on the command line (None: found by the usual names; no rating)."""
    given = dict(columns or {})
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder: csv reads one file (--input FILE.csv, .tsv, .csv.gz or .parquet)")
    parquet = is_parquet(path)
    events = ParquetEvents(path, given) if parquet else TextEvents(path, given)
    reader = EventReader(path, table, "row" if parquet else "line")
    if not parquet:
        reader.blank, reader.skipped = events.blank, 1
    parse = _row_parser(events, parquet)
    reader.run(parse, events.records())
    if not parquet:
        reader.lines = max(reader.lines, events.line)
    return SourceData(readers=[reader], has_rating="rating" in events.columns, ts_scale=1000,
                      max_len=DEFAULT_MAX_LEN, whole_seconds=True)


def _row_parser(events, parquet: bool) -> Callable[[int, list], tuple]:
    """``parse(n, fields) -> (user, item, rating, ms)``; BadLine naming the column where a field is wrong."""
    cols = events.columns
    at = {role: (k if parquet else cols[role]) for k, role in enumerate(cols)}
    name = {role: _bare(events.header[cols[role]]) for role in cols}
    ui, ii, ti, ri = at["user"], at["item"], at["time"], at.get("rating")
    time_of = (lambda v: None if v is None else _ms_in_range(v)) if parquet and events.time_ms else to_ms
    check = events.check

    def parse(n: int, fields) -> tuple:
        check(n, fields)
        user = valid_id(fields[ui])
        if user is None:
            raise BadLine(f"column {name['user']}: empty id or an id with a tab/newline")
        item = valid_id(fields[ii])
        if item is None:
            raise BadLine(f"column {name['item']}: empty id or an id with a tab/newline")
        ms = time_of(fields[ti])
        if ms is None:
            raise BadLine(f"column {name['time']}: not a time ({_shown(fields[ti])})",
                          f"column {name['time']}: not a time")
        rating = 1.0
        if ri is not None:
            rating = to_float(fields[ri])
            if rating is None:
                raise BadLine(f"column {name['rating']}: not a number ({_shown(fields[ri])})",
                              f"column {name['rating']}: not a number")
        return user, item, rating, ms

    return parse
