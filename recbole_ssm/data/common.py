"""Pieces every source shares: streaming reads, bad-line accounting, ordering, dedup,
iterative k-core, atomic output folders, the dataset yaml and the summary.

Rows are held as four compact columns (user code int32, item code int32, rating float32,
timestamp int64) plus one interned string per distinct user and item, so memory grows with
the number of interactions and ids kept, never with the size of the raw file.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import numpy as np
import yaml

from recbole_ssm.errors import UsageError
from recbole_ssm.utils import default_mode

SOURCES = ("movielens", "amazon2023", "seqtext", "csv")
FIRST_BAD_SHOWN = 5
SNIFF_LINES = 20  # a file whose first 20 data lines all fail to parse is the wrong source


class DataFormatError(UsageError):
    """The input file is not what the chosen source reads, or holds too many malformed lines."""


# ---------------------------------------------------------------------------------------
# reading


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


# ---------------------------------------------------------------------------------------
# filtering


@dataclass
class Filtered:
    """Row indices to write, in output order, and what each step dropped."""

    order: np.ndarray
    steps: dict


def _drop_duplicates(u, i, r, t, keep: np.ndarray) -> int:
    """Clear ``keep`` where a row equals an earlier kept one in all four columns; return how many."""
    idx = np.flatnonzero(keep)
    o = idx[np.lexsort((r[idx], i[idx], t[idx], u[idx]))]  # stable: the first of equal rows comes first
    same = np.zeros(len(o), dtype=bool)
    if len(o) > 1:
        same[1:] = (u[o[1:]] == u[o[:-1]]) & (i[o[1:]] == i[o[:-1]]) & (t[o[1:]] == t[o[:-1]]) & (
            r[o[1:]] == r[o[:-1]])
    keep[o[same]] = False
    return int(same.sum())


def _kcore(u, i, keep: np.ndarray, kcore: int, n_users: int, n_items: int) -> dict:
    """Clear ``keep`` for rows of users or items with fewer than ``kcore`` kept rows, until none is left;
    return what was dropped."""
    users_before = int(np.unique(u[keep]).size)
    items_before = int(np.unique(i[keep]).size)
    rows_before = int(keep.sum())
    passes = 0
    if kcore > 1:
        while True:
            ucnt = np.bincount(u[keep], minlength=n_users)
            icnt = np.bincount(i[keep], minlength=n_items)
            drop = keep & ((ucnt[u] < kcore) | (icnt[i] < kcore))
            if not drop.any():
                break
            keep &= ~drop
            passes += 1
    return {"k": kcore, "passes": passes, "rows": rows_before - int(keep.sum()),
            "users": users_before - int(np.unique(u[keep]).size),
            "items": items_before - int(np.unique(i[keep]).size)}


def filter_rows(table: Interactions, kcore: int, min_rating: float | None, last: int | None = None) -> Filtered:
    """Min-rating filter, exact-duplicate removal, iterative k-core, then stable ordering; with
    ``last``, each user's last ``last`` rows only (after the k-core filter, as for lifelong data).

    Output order is (user in order of first appearance, timestamp, original position).
    A duplicate is a row equal to an earlier one in user, item, rating and timestamp; the
    first is kept. k-core drops users and items with fewer than ``kcore`` rows, again and
    again until every remaining user and item has at least ``kcore``.
    """
    u, i, r, t = table.columns()
    n = len(u)
    keep = np.ones(n, dtype=bool)
    steps: dict = {"rows_in": int(n)}

    if min_rating is not None:
        low = r < np.float32(min_rating)
        keep &= ~low
        steps["below_min_rating"] = int(low.sum())

    steps["duplicates"] = _drop_duplicates(u, i, r, t, keep)
    steps["kcore"] = _kcore(u, i, keep, kcore, len(table.users), len(table.items))
    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((t[idx], u[idx]))]  # lexsort is stable: ties keep file order
    if last is not None:
        users = u[order]  # each user's rows are one run, oldest first
        ends = np.append(np.flatnonzero(np.diff(users)) + 1, len(users))  # end (exclusive) of each run
        run_end = np.repeat(ends, np.diff(np.concatenate([[0], ends])))
        newest = run_end - np.arange(len(users)) <= last
        steps["last"] = {"n": last, "rows": int((~newest).sum())}
        order = order[newest]
    steps["rows_out"] = int(len(order))
    return Filtered(order=order, steps=steps)


# ---------------------------------------------------------------------------------------
# writing


def cell(value: object) -> str:
    """One field of an atomic file: tabs/newlines become spaces; quotes are CSV-quoted so
    RecBole's pandas reader gives back the same text."""
    s = "" if value is None else str(value)
    s = s.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    if '"' in s:
        s = '"' + s.replace('"', '""') + '"'
    return s


def write_table(path: str, header: list[str], rows) -> int:
    """Write a header and rows (iterables of already formatted cells); returns the row count."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        buf = []
        for row in rows:
            buf.append("\t".join(row))
            n += 1
            if len(buf) >= 65536:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")
    return n


def format_timestamp(ts: int, scale: int) -> str:
    if scale == 1:
        return str(ts)
    if scale == 1000:
        sec, ms = divmod(abs(int(ts)), 1000)
        return f"{'-' if ts < 0 else ''}{sec}.{ms:03d}"
    raise ValueError(f"unsupported timestamp scale {scale}")


def write_inter(path: str, table: Interactions, order: np.ndarray, has_rating: bool, ts_scale: int,
                chunk: int = 262144) -> int:
    """The ``.inter`` file, in ``order``; written in chunks so memory stays flat."""
    u, i, r, t = table.columns()
    users = [cell(x) for x in table.users]
    items = [cell(x) for x in table.items]
    header = ["user_id:token", "item_id:token"] + (["rating:float"] if has_rating else [])
    header.append("timestamp:float")

    def rows():
        for start in range(0, len(order), chunk):
            o = order[start:start + chunk]
            uu, ii, tt = u[o].tolist(), i[o].tolist(), t[o].tolist()
            rr = [f"{x:g}" for x in r[o].tolist()] if has_rating else None
            for k in range(len(o)):
                ts = format_timestamp(tt[k], ts_scale)
                if rr is None:
                    yield (users[uu[k]], items[ii[k]], ts)
                else:
                    yield (users[uu[k]], items[ii[k]], rr[k], ts)

    return write_table(path, header, rows())


def sequence_stats(table: Interactions, order: np.ndarray) -> dict:
    u = table.columns()[0][order]
    i = table.columns()[1][order]
    lengths = np.bincount(u)
    lengths = lengths[lengths > 0]
    n_users, n_items = int(lengths.size), int(np.unique(i).size)
    return {
        "users": n_users,
        "items": n_items,
        "interactions": int(len(order)),
        "density": float(len(order) / (n_users * n_items)) if n_users and n_items else 0.0,
        "seq_len": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                    "mean": round(float(lengths.mean()), 2), "max": int(lengths.max())},
    }


def dataset_yaml(name: str, source: str, has_rating: bool, kcore: int, max_len: int,
                 data_path: str | None, extra_load_col: dict | None = None) -> str:
    """The ``<name>.yaml`` text written beside a prepared data set's atomic files."""
    inter = ["user_id", "item_id"] + (["rating"] if has_rating else []) + ["timestamp"]
    interval = f"[{kcore},inf)" if kcore > 1 else "[0,inf)"
    body: dict = {}
    if data_path:
        body["data_path"] = data_path
    body["load_col"] = {"inter": inter}
    body["user_inter_num_interval"] = interval
    body["item_inter_num_interval"] = interval
    body["MAX_ITEM_LIST_LENGTH"] = max_len
    head = (f"# {name}: written by `python -m recbole_ssm.data prepare {source}`.\n"
            f"# The atomic files are already {kcore}-core; the intervals below leave them as they are.\n")
    if extra_load_col:
        cols = "; ".join(f"{k}: [{', '.join(v)}]" for k, v in extra_load_col.items())
        head += f"# Side features were written too; to load them add to load_col: {cols}\n"
    return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def format_summary(summary: dict) -> str:
    """The human-readable summary printed after a run and saved as ``summary.txt``."""
    s = summary
    st = s["steps"]
    kc = st["kcore"]
    out = [f"prepared {s['name']} from {s['source']} -> {s['output']}"]
    for rd in s["inputs"]:
        mal = rd["malformed"]
        lines = f"{rd['lines']} lines, " if rd.get("unit", "line") == "line" else ""  # Parquet: rows only
        line = (f"  read {rd['file']}: {lines}{rd['rows']} rows, "
                f"{mal['count']} malformed, {rd['blank_lines']} blank, {rd['header_lines']} header")
        out.append(line)
        if mal["count"]:
            first = ", ".join(f"{b['line']} ({b['reason']})" for b in mal["first"])
            more = ", ..." if mal["count"] > len(mal["first"]) else ""
            out.append(f"    malformed {rd.get('unit', 'line')}s (skipped): {first}{more}")
    out.append(f"  dropped: {st.get('below_min_rating', 0)} rows below --min-rating"
               + (f" {s['min_rating']:g}" if s.get("min_rating") is not None else " (not set)")
               + f", {st['duplicates']} exact duplicate rows, "
               f"{kc['rows']} rows by {kc['k']}-core "
               f"({kc['users']} users, {kc['items']} items, {kc['passes']} passes)")
    f = s["stats"]
    sl = f["seq_len"]
    out.append(f"  kept: {f['users']} users, {f['items']} items, {f['interactions']} interactions "
               f"(density {f['density']:.4%})")
    out.append(f"  sequence length: min {sl['min']}, median {sl['median']:g}, "
               f"mean {sl['mean']:g}, max {sl['max']}")
    for side in s.get("side_files", []):
        out.append(f"  {side}")
    out.append(f"  files: {', '.join(s['files'])}")
    out.append(f"  dataset config: {os.path.join(s['output'], s['name'] + '.yaml')} (read by every run of {s['name']})")
    if s.get("properties_yaml"):
        out.append(f"  also written: {s['properties_yaml']}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# the output folder


def check_targets(output: str, yaml_path: str | None, force: bool) -> None:
    """Refuse, before any work, to replace an existing output folder or dataset yaml without --force."""
    if os.path.exists(output) and not force:
        raise UsageError(f"output folder {output} already exists: pass --force to replace it")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"output {output} exists and is not a folder: remove it or choose another --output")
    if yaml_path and os.path.exists(yaml_path) and not force:
        raise UsageError(f"dataset config {yaml_path} already exists: pass --force to replace it, "
                         "or --properties-dir to write it elsewhere")


class OutputFolder:
    """A temp folder beside ``output``; :meth:`commit` renames it into place (replacing the old one)."""

    def __init__(self, output: str) -> None:
        self.output = os.path.abspath(output)
        parent = os.path.dirname(self.output)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.output)}.tmp-", dir=parent)
        os.chmod(self.tmp, default_mode(0o777))  # mkdtemp's 0700 would outlive the rename

    def path(self, filename: str) -> str:
        return os.path.join(self.tmp, filename)

    def commit(self) -> None:
        old = None
        if os.path.exists(self.output):
            base, parent = os.path.basename(self.output), os.path.dirname(self.output)
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.rmdir(old)
            os.replace(self.output, old)
        os.replace(self.tmp, self.output)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_summary_files(folder: OutputFolder, summary: dict) -> None:
    with open(folder.path("summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    with open(folder.path("summary.txt"), "w", encoding="utf-8") as f:
        f.write(format_summary(summary))
