"""``run_recbole_ssm.py recommend``: top-k items from a saved checkpoint (see recbole_ssm/serve.py)."""

from __future__ import annotations

import json
import sys

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help

USAGE = """\
usage: run_recbole_ssm.py recommend --checkpoint=PATH (--users=U1,U2,... | --history_file=PATH)
                                    [--items=I1,I2,...] [--k=10] [--exclude_seen=True]
                                    [--format=tsv|jsonl] [--output=PATH]

Top-k items (external item tokens) for users of the data set the checkpoint was trained on.
  --users         user tokens; each user's history is the data set's, in time order
  --items         item tokens the users interacted with after that, oldest first (with no
                  --users: a history of its own, for a user the data set does not know)
  --history_file  one request a line: USER<TAB>ITEM ITEM ... (USER '-' for none); replaces
                  --users and --items
  --k             how many items (default 10)
  --exclude_seen  leave out items already in the history (default False)
  --format        tsv (user, rank, item, score; the default) or jsonl (one object a user)
  --output        write there (whole or not at all) instead of standard output
Causal SSM models (Mamba4Rec, Mamba2Rec, RecMamba) keep each user's state and step only the
new items; other models re-encode the last MAX_ITEM_LIST_LENGTH items.
"""

OPTIONS = {
    **{k: Opt(None) for k in ("checkpoint", "users", "items", "history_file", "output")},
    "k": Opt(10, "whole", minimum=1),
    "exclude_seen": Opt(False, "flag"),
    "format": Opt("tsv", "choice", choices=("tsv", "jsonl")),
}


def check(opts: dict) -> dict:
    """The options that must come together, or apart."""
    if opts["checkpoint"] is None:
        raise UsageError("recommend needs --checkpoint=PATH (a .pth file written by a training run)")
    if (opts["users"] or opts["items"]) and opts["history_file"]:
        raise UsageError("recommend: give --users/--items or --history_file, not both")
    if not any(opts[k] for k in ("users", "items", "history_file")):
        raise UsageError("recommend needs --users=U1,U2, --items=I1,I2 or --history_file=PATH")
    return opts


def requests(opts: dict[str, str]) -> list[tuple[str | None, list[str]]]:
    """(user token or None, new item tokens) for each request."""
    if opts["history_file"]:
        path = opts["history_file"]
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as exc:
            raise UsageError(f"cannot read --history_file={path}: {exc.strerror}") from None
        out = []
        for number, line in enumerate(lines, 1):
            user, sep, items = line.partition("\t")
            if not sep:
                raise UsageError(f"{path}, line {number}: expected USER<TAB>ITEM ITEM ..., got {line!r}")
            out.append((None if user.strip() in ("", "-") else user.strip(), items.split()))
        return out
    items = [t for t in (opts["items"] or "").split(",") if t]
    users = [u for u in (opts["users"] or "").split(",") if u]
    return [(u, items) for u in users] if users else [(None, items)]


def main(argv: list[str]) -> int:
    if wants_help(argv) or any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    opts = check(parse(argv, OPTIONS, "recommend", settings=False)[0])
    k, exclude, fmt = opts["k"], opts["exclude_seen"], opts["format"]
    todo = requests(opts)

    from recbole_ssm.serve import from_checkpoint

    rec = from_checkpoint(opts["checkpoint"])
    lines = []
    for user, items in todo:
        top = rec.recommend(user, items, k=k, exclude_seen=exclude)
        if fmt == "jsonl":
            lines.append(json.dumps({"user": user, "items": [r.item for r in top],
                                     "scores": [round(r.score, 6) for r in top]}))
        else:
            lines.extend(f"{user or '-'}\t{rank}\t{r.item}\t{r.score:.6f}" for rank, r in enumerate(top, 1))
    text = "".join(line + "\n" for line in lines)
    if opts["output"]:
        from recbole_ssm.utils import atomic_write_text

        atomic_write_text(opts["output"], text)
    else:
        sys.stdout.write(text)
    return 0
