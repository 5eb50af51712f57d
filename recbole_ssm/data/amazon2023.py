"""McAuley Lab Amazon Reviews 2023: ``<Category>.jsonl(.gz)`` and ``meta_<Category>.jsonl(.gz)``.

One JSON object a line with ``user_id``, ``parent_asin``, ``rating`` and ``timestamp``
(Unix milliseconds); items are ``parent_asin`` (product variants fold into their parent).
Timestamps are written in seconds with millisecond decimals. The optional meta file gives
the ``.item`` file: title, main_category, store, average_rating, rating_number.
"""

from __future__ import annotations

import os
import re

from recbole_ssm.data.reading import (
    BadLine,
    Interactions,
    LineReader,
    SideResult,
    SourceData,
    iter_lines,
    parse_json,
    to_float,
    to_int_timestamp,
    valid_id,
)
from recbole_ssm.data.writing import cell, write_table

DEFAULT_MAX_LEN = 50
REQUIRED = ("user_id", "parent_asin", "rating", "timestamp")
ITEM_FIELDS = (("title", "token"), ("main_category", "token"), ("store", "token"),
               ("average_rating", "float"), ("rating_number", "float"))


def parse_review(n: int, raw: bytes):
    """``(user, item, rating, ts_ms)`` from one review line; BadLine where it is malformed."""
    obj = parse_json(raw)
    for key in REQUIRED:
        if obj.get(key) is None:
            raise BadLine(f"missing {key}")
    user = valid_id(obj["user_id"])
    item = valid_id(obj["parent_asin"])
    if user is None or item is None:
        raise BadLine("empty id or id with a tab/newline")
    rating = to_float(obj["rating"])
    if rating is None:
        raise BadLine("non-numeric rating")
    ts = to_int_timestamp(obj["timestamp"])
    if ts is None:
        raise BadLine("non-numeric timestamp")
    return user, item, rating, ts


def find_meta(path: str) -> str | None:
    """``meta_<Category>.jsonl(.gz)`` beside ``<Category>.jsonl(.gz)``, if there is one."""
    folder, base = os.path.split(path)
    stem = re.sub(r"\.jsonl(\.gz)?$", "", base)
    for ext in (".jsonl.gz", ".jsonl"):
        cand = os.path.join(folder, f"meta_{stem}{ext}")
        if os.path.isfile(cand) and os.path.abspath(cand) != os.path.abspath(path):
            return cand
    return None


def read(path: str, table: Interactions, meta: str | None = None) -> SourceData:
    """Read one review file into ``table``; ``meta`` (or one found beside it) feeds ``.item``."""
    if os.path.basename(path).startswith("meta_"):
        from recbole_ssm.data.reading import DataFormatError

        raise DataFormatError(f"{path} is a metadata file: pass the review file <Category>.jsonl(.gz) as "
                              "--input and this one as --meta")
    reader = LineReader("amazon2023", path, table)
    reader.run(parse_review, iter_lines(path))
    meta_path = meta or find_meta(path)
    side = None
    if meta_path:
        def side(folder, name, table, order):
            return write_items(meta_path, folder, name, table, order)
    return SourceData(readers=[reader], has_rating=True, ts_scale=1000, max_len=DEFAULT_MAX_LEN, side=side)


def write_items(meta_path: str, folder, name: str, table: Interactions, order) -> SideResult:
    """Stream the meta file; write one ``.item`` row per kept item that has metadata."""
    kept = set(table.columns()[1][order].tolist())
    codes = table.item_codes
    reader = LineReader("amazon2023 meta", meta_path, Interactions())
    state = {"written": set(), "unused": 0, "repeated": 0}
    rows = []

    def parse(n: int, raw: bytes) -> list:
        """The line's ``.item`` row: one for a kept item seen first here, none otherwise."""
        obj = parse_json(raw)
        item = valid_id(obj.get("parent_asin"))
        if item is None:
            raise BadLine("missing parent_asin")
        code = codes.get(item)
        if code is None or code not in kept:
            state["unused"] += 1
            return []
        if code in state["written"]:
            state["repeated"] += 1
            return []
        state["written"].add(code)
        row = [cell(item)]
        for key, kind in ITEM_FIELDS:
            v = obj.get(key)
            if kind == "float":
                f = to_float(v)
                row.append("" if f is None else f"{f:g}")
            else:
                row.append(cell(v if isinstance(v, str) else ""))
        return [row]

    def keep(found: list) -> int:
        rows.extend(found)
        return len(found)

    reader.run(parse, iter_lines(meta_path), add=keep)
    header = ["item_id:token"] + [f"{k}:{kind}" for k, kind in ITEM_FIELDS]
    write_table(folder.path(f"{name}.item"), header, rows)
    missing = len(kept) - len(state["written"])
    notes = [f"{name}.item: {len(rows)} items from {os.path.basename(meta_path)}; "
             f"{state['unused']} meta rows for items not in the data (not written), "
             f"{state['repeated']} repeated, {reader.bad.count} malformed (skipped), "
             f"{missing} kept items without metadata"]
    if reader.bad.count:
        notes.append("  " + reader.bad.describe())
    return SideResult(files=[f"{name}.item"], notes=notes,
                      load_col={"item": ["item_id"] + [k for k, _ in ITEM_FIELDS]}, readers=[reader])
