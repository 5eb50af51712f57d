"""``run_recbole_ssm.py recommend``: every user's (or some users') top-k items from a saved checkpoint.

Users are read ``--batch_size`` at a time (the run's ``eval_batch_size`` by default) and item
scores a chunk of the catalogue at a time (``recbole_ssm.scoring``), so memory is bounded by one
batch whatever the number of users and items. The output is written whole or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help

USAGE = """\
usage: run_recbole_ssm.py recommend --checkpoint=PATH (--users=all|U1,U2,...|@FILE | --items=I1,...
                                    | --history_file=PATH) [--items=I1,I2,...] [--k=10]
                                    [--exclude_seen=true] [--output=PATH] [--format=tsv|jsonl|parquet]
                                    [--strict=false] [--batch_size=N]

Top-k items (external item tokens) for users of the data set the checkpoint was trained on.
  --users         all (every user of the data set), user tokens, or @FILE (one token a line);
                  each user's history is the data set's, in time order
  --items         item tokens the users interacted with after that, oldest first (with no
                  --users: a history of its own, for a user the data set does not know)
  --history_file  one request a line: USER<TAB>ITEM ITEM ..., or USER alone (the data set's
                  history), or -<TAB>ITEM ... (no user); replaces --users and --items
  --k             how many items a user (default 10)
  --exclude_seen  leave out items already in the user's history (default true; false gives
                  RecBole's ranking, which includes them)
  --output        the file to write (whole or not at all); its extension picks the format:
                  .tsv/.txt, .jsonl or .parquet (Parquet needs pyarrow). Default: standard output
  --format        tsv, jsonl or parquet, when the extension does not say
  --strict        users the data set does not know are an error (default: one warning, skipped)
  --batch_size    users scored at once (default: the run's eval_batch_size)
Output: a header, then one row per (user, rank): user, rank, item, score.
"""

OPTIONS = {
    **{k: Opt(None) for k in ("checkpoint", "users", "items", "history_file", "output", "format")},
    "k": Opt(10, "whole", minimum=1),
    "exclude_seen": Opt(True, "flag"),
    "strict": Opt(False, "flag"),
    "batch_size": Opt(None, "whole", minimum=1),
}
FORMATS = {".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
COLUMNS = ("user", "rank", "item", "score")


def check(opts: dict) -> dict:
    """The options that must come together, or apart; sets ``format``."""
    if opts["checkpoint"] is None:
        raise UsageError("recommend needs --checkpoint=PATH (a .pth file written by a training run)")
    if (opts["users"] or opts["items"]) and opts["history_file"]:
        raise UsageError("recommend: give --users/--items or --history_file, not both")
    if not any(opts[k] for k in ("users", "items", "history_file")):
        raise UsageError("recommend needs --users=all|U1,U2|@FILE, --items=I1,I2 or --history_file=PATH")
    if opts["users"] == "all" and opts["items"]:
        raise UsageError("recommend: --items add events after one history; with --users=all use --history_file")
    fmt = opts["format"]
    if fmt is None:
        ext = os.path.splitext(opts["output"] or "")[1].lower()
        fmt = FORMATS.get(ext, "tsv") if opts["output"] else "tsv"
        if opts["output"] and ext not in FORMATS:
            raise UsageError(f"--output={opts['output']}: unknown extension {ext!r}; use .tsv, .jsonl or .parquet, "
                             "or give --format=tsv|jsonl|parquet")
    elif fmt not in ("tsv", "jsonl", "parquet"):
        raise UsageError(f"--format takes one of tsv, jsonl, parquet, got {fmt!r}")
    if fmt == "parquet" and not opts["output"]:
        raise UsageError("--format=parquet needs --output=FILE.parquet (Parquet is not written to a terminal)")
    opts["format"] = fmt
    return opts


def _read_lines(path: str, option: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except OSError as exc:
        raise UsageError(f"cannot read {option}{path}: {exc.strerror}") from None


def requests(opts: dict) -> list[tuple[str | None, list[str]]] | str:
    """(user token or None, new item tokens) for each request, or "all"."""
    if opts["history_file"]:
        path = opts["history_file"]
        out = []
        for number, line in enumerate(_read_lines(path, "--history_file="), 1):
            if not line.strip():
                continue
            user, _, items = line.partition("\t")
            user = None if user.strip() in ("", "-") else user.strip()
            if user is None and not items.split():
                raise UsageError(f"{path}, line {number}: no user and no items; expected USER, "
                                 "USER<TAB>ITEM ITEM ... or -<TAB>ITEM ITEM ...")
            out.append((user, items.split()))
        return out
    items = [t for t in (opts["items"] or "").split(",") if t]
    users_opt = opts["users"] or ""
    if users_opt == "all":
        return "all"
    if users_opt.startswith("@"):
        users = [u.strip() for u in _read_lines(users_opt[1:], "--users=@") if u.strip()]
        if not users:
            raise UsageError(f"--users={users_opt}: the file lists no user (one token a line)")
    else:
        users = [u for u in users_opt.split(",") if u]
    return [(u, items) for u in users] if users else [(None, items)]


class Writer:
    """Rows of (user, rank, item, score) to a file written whole (temp file, then rename) or to stdout."""

    def __init__(self, path: str | None, fmt: str):
        self.path, self.fmt = path, fmt
        self._parquet = None
        if path is None:
            self.tmp, self.file = None, sys.stdout
        else:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise UsageError(f"--output={path}: folder {folder} does not exist")
            fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
            self.file = None if fmt == "parquet" else os.fdopen(fd, "w", encoding="utf-8", newline="\n")
            if fmt == "parquet":
                os.close(fd)
        if fmt == "tsv":
            self.file.write("\t".join(COLUMNS) + "\n")
        elif fmt == "parquet":
            self._parquet = _parquet_writer(self.tmp)

    def write(self, cols: dict) -> None:
        if self.fmt == "parquet":
            import pyarrow as pa

            self._parquet.write_table(pa.table({"user": cols["user"].astype(str), "rank": cols["rank"].astype("int32"),
                                                "item": cols["item"].astype(str), "score": cols["score"]},
                                               schema=self._parquet.schema))
            return
        rows = zip(cols["user"].tolist(), cols["rank"].tolist(), cols["item"].tolist(), cols["score"].tolist())
        if self.fmt == "tsv":
            self.file.write("".join(f"{u}\t{r}\t{i}\t{s:.6f}\n" for u, r, i, s in rows))
        else:
            self.file.write("".join(json.dumps({"user": u, "rank": r, "item": i, "score": round(s, 6)}) + "\n"
                                    for u, r, i, s in rows))

    def commit(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self.tmp is None:
            self.file.flush()
            return
        if self.file is not None:
            self.file.close()
        from recbole_ssm.utils import default_mode

        os.chmod(self.tmp, default_mode(0o666))  # mkstemp creates 0600; the result is an ordinary file
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.tmp is None:
            return
        try:
            if self._parquet is not None:
                self._parquet.close()
            if self.file is not None:
                self.file.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("writing Parquet needs pyarrow: pip install pyarrow (or the [parquet] extra)") from None
    return pa, pq


def _parquet_writer(path: str):
    pa, pq = _pyarrow()
    schema = pa.schema([("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()), ("score", pa.float64())])
    return pq.ParquetWriter(path, schema)


def resolve(rec, todo, strict: bool) -> list[tuple[int | None, list[int]]]:
    """Requests with internal ids; unknown users are an error with ``strict``, else named once and skipped."""
    if todo == "all":
        return [(uid, []) for uid in rec.all_users()]
    from recbole_ssm.serve import warn_unknown

    named = [user for user, _ in todo if user is not None]
    uids = iter(rec.known_users(named, strict))
    out, unknown = [], []
    for user, items in todo:
        new = [rec.item_id(t) for t in items]
        uid = next(uids) if user is not None else None
        if user is not None and uid is None:
            unknown.append(user)
        else:
            out.append((uid, new))
    if unknown and not out:
        raise UsageError(f"unknown user token {unknown[0]!r}: none of the users given is in the data set the model "
                         "was trained on")
    if unknown:
        warn_unknown(unknown)
    return out


def export(rec, work, k: int, exclude_seen: bool, writer: Writer, batch_size: int | None = None,
           progress: bool = False) -> None:
    """Every request's top ``k`` through ``writer``, committed whole, or discarded on any error."""
    from recbole_ssm.serve import frame_rows

    try:
        batches = rec.topk(work, k, exclude_seen, batch_size)
        if progress:
            batches = _progress(batches, len(work), batch_size or rec.batch_size)
        for batch, values, items in batches:
            writer.write(frame_rows(rec, batch, values, items))
        writer.commit()
    except BaseException:
        writer.discard()
        raise


def main(argv: list[str]) -> int:
    if wants_help(argv) or any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    opts = check(parse(argv, OPTIONS, "recommend", settings=False)[0])
    todo = requests(opts)
    if opts["format"] == "parquet":
        _pyarrow()  # before the model is loaded

    from recbole_ssm.serve import from_checkpoint

    logging.disable(logging.INFO)  # RecBole's INFO lines while the data set loads: the output is the point
    try:
        rec = from_checkpoint(opts["checkpoint"])
    finally:
        logging.disable(logging.NOTSET)
    work = resolve(rec, todo, opts["strict"])
    export(rec, work, opts["k"], opts["exclude_seen"], Writer(opts["output"], opts["format"]), opts["batch_size"],
           progress=True)
    return 0


def _progress(batches, users: int, batch_size: int):
    """A progress bar on a terminal (standard error), none in a log."""
    if not sys.stderr.isatty():
        return batches
    from tqdm import tqdm

    return tqdm(batches, total=-(-users // batch_size), unit="batch", desc=f"recommend {users} users", file=sys.stderr)
