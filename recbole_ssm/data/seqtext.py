"""SASRec / S3-Rec text layouts: ``user item`` a line, or ``user item1 item2 ...`` a line.

Lines are in time order, and a user may span several lines (the ``user item`` layout); the
items of a user are concatenated in file order. There is no time in these files, so each
row gets a synthetic timestamp, its position in the file (0, 1, 2, ...): RecBole's time
ordering then keeps the given order. There is no rating column.
"""

from __future__ import annotations

from recbole_ssm.data.common import Interactions, LineReader, SourceData, iter_lines

DEFAULT_MAX_LEN = 50


def read(path: str, table: Interactions) -> SourceData:
    """Read one seqtext file into ``table``."""
    reader = LineReader("seqtext", path, table)
    position = [0]

    def parse(n: int, raw: bytes):
        if b"\t" in raw.strip():
            return "tab-separated (seqtext is space-separated `user item ...`)"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8"
        parts = text.split()
        if len(parts) < 2:
            return "a user with no item"
        if any(c in text for c in ("{", "::", ",")):
            return "not `user item ...` (found '{', '::' or ',')"
        return parts

    def add(parts: list) -> int:
        user = parts[0]
        for item in parts[1:]:
            table.add(user, item, 1.0, position[0])
            position[0] += 1
        return len(parts) - 1

    reader.run(parse, iter_lines(path), add=add)
    return SourceData(readers=[reader], has_rating=False, ts_scale=1, max_len=DEFAULT_MAX_LEN)
