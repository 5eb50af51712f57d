"""SASRec / S3-Rec text layouts: ``user item`` a line, or ``user item1 item2 ...`` a line.

Lines are in time order, and a user may span several lines (the ``user item`` layout); the
items of a user are concatenated in file order. There is no time in these files, so each
row gets a synthetic timestamp, its position in the file (0, 1, 2, ...): RecBole's time
ordering then keeps the given order. There is no rating column.
"""

from __future__ import annotations

from recbole_ssm.data.reading import BadLine, Interactions, LineReader, SourceData, iter_lines

DEFAULT_MAX_LEN = 50


def read(path: str, table: Interactions) -> SourceData:
    """Read one seqtext file into ``table``."""
    reader = LineReader("seqtext", path, table)
    position = 0  # the next row's synthetic timestamp

    def parse(n: int, raw: bytes) -> list:
        """``[user, item, item, ...]`` from one line; BadLine where it is malformed."""
        if b"\t" in raw.strip():
            raise BadLine("tab-separated (seqtext is space-separated `user item ...`)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadLine("not UTF-8") from None
        parts = text.split()
        if len(parts) < 2:
            raise BadLine("a user with no item")
        if any(c in text for c in ("{", "::", ",")):
            raise BadLine("not `user item ...` (found '{', '::' or ',')")
        return parts

    def add(parts: list) -> int:
        nonlocal position
        user = parts[0]
        for item in parts[1:]:
            table.add(user, item, 1.0, position)
            position += 1
        return len(parts) - 1

    reader.run(parse, iter_lines(path), add=add)
    return SourceData(readers=[reader], has_rating=False, ts_scale=1, max_len=DEFAULT_MAX_LEN)


def training_lengths(path: str) -> list[int]:
    """Each user's training-history length in a seqtext file: its items but the last two (the
    validation and test targets of RecBole's leave-one-out split; no k-core filter), users in
    order of first appearance. A user may span several lines, and the file may be gzipped, as in
    ``read`` (the same ``iter_lines``)."""
    counts: dict[bytes, int] = {}
    for _n, raw in iter_lines(path):
        parts = raw.split()
        if parts:
            counts[parts[0]] = counts.get(parts[0], 0) + len(parts) - 1
    return [max(n - 2, 0) for n in counts.values()]
