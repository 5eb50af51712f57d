"""A check of a data set's ``.inter`` atomic file before RecBole reads it.

RecBole reads atomic files with pandas and fails late and deep (a KeyError, an unpacking error,
"Some feat is empty") or not at all: a row with too few fields becomes missing values, and a
column that ``load_col`` asks for but the file lacks is dropped without a word until sorting by
it fails. :func:`check_inter_file` reads the file once (about a second per million lines) and
raises a :class:`DataFormatError` (a UsageError: one line, exit code 2) naming the file, the
line or column, and the fix.
"""

from __future__ import annotations

import functools
import os

from recbole_ssm.data.reading import DataFormatError

TYPES = ("token", "float", "token_seq", "float_seq")
FIX = "fix the file, or write it again with `python run_recbole_ssm.py prepare` (docs/data.md)"


def check_inter_file(path: str, separator: str = "\t", required: list[str] | tuple = (),
                     encoding: str = "utf-8") -> int:
    """Check the header, the columns in ``required``, the field count of every row and the numbers
    of ``float`` columns; return the number of interactions."""
    shown = "<TAB>" if separator == "\t" else separator
    try:
        f = open(path, encoding=encoding, newline="")
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        header = f.readline().rstrip("\r\n")
        if not header.strip():
            raise DataFormatError(f"{path} is empty: it needs a header line such as "
                                  f"'user_id:token{shown}item_id:token{shown}timestamp:float'; {FIX}")
        columns = []
        for field in header.split(separator):
            col, colon, kind = field.partition(":")
            if not colon or not col or kind not in TYPES:
                raise DataFormatError(f"{path}: header field {field!r} is not NAME:TYPE with TYPE one of "
                                      f"{', '.join(TYPES)} (RecBole's atomic files; are the fields separated by "
                                      f"{shown}?); {FIX}")
            columns.append((col, kind))
        names = [c for c, _ in columns]
        missing = [c for c in required if c not in names]
        if missing:
            raise DataFormatError(f"{path} has no column {missing[0]!r}, which this run needs (columns: "
                                  f"{', '.join(names)}); add it, or leave it out of load_col / the field settings")
        floats = [i for i, (_, kind) in enumerate(columns) if kind == "float"]
        width, rows = len(columns), 0
        for number, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            values = line.split(separator)
            if len(values) != width:
                raise DataFormatError(f"{path} line {number} has {len(values)} field(s), the header {width}: {FIX}")
            for i in floats:
                value = values[i]
                if value:
                    try:
                        float(value)
                    except ValueError:
                        raise DataFormatError(f"{path} line {number}: {columns[i][0]}:float is {value!r}, not a "
                                              f"number; {FIX}") from None
            rows += 1
    if rows == 0:
        raise DataFormatError(f"{path} has a header but no interactions; {FIX}")
    return rows


def required_columns(config) -> list[str]:
    """The ``.inter`` columns a run needs: user, item, the time when the split orders by it, and
    every column ``load_col`` names."""
    needed = [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]
    order = (config["eval_args"] or {}).get("order", "RO")
    if order == "TO" and config["TIME_FIELD"]:
        needed.append(config["TIME_FIELD"])
    load_col = config["load_col"]
    if isinstance(load_col, dict):
        needed += [c for c in load_col.get("inter") or [] if c not in needed]
    return needed


def check_dataset_files(config) -> None:
    """:func:`check_inter_file` for the run's data set (not for the copy of ml-100k inside RecBole)."""
    import recbole

    folder = os.path.realpath(config["data_path"])
    if folder.startswith(os.path.realpath(os.path.dirname(recbole.__file__)) + os.sep):
        return
    path = os.path.join(folder, f"{config['dataset']}.inter")
    if os.path.isfile(path):
        stat = os.stat(path)
        _checked(path, stat.st_mtime_ns, stat.st_size, config["field_separator"] or "\t",
                 tuple(required_columns(config)), config["encoding"] or "utf-8")


@functools.lru_cache(maxsize=32)
def _checked(path: str, mtime_ns: int, size: int, separator: str, required: tuple, encoding: str) -> int:
    """:func:`check_inter_file` once per file version and settings in a process (``bench table`` builds
    the configuration of every model before training; a failed check is not cached)."""
    return check_inter_file(path, separator, required, encoding)
