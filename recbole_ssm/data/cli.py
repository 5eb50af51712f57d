"""``prepare SOURCE --input PATH [...]``: the command line of the converter.

Reached as ``python run_recbole_ssm.py prepare ...`` or ``python -m recbole_ssm.data prepare ...``.
"""

from __future__ import annotations

import argparse

from recbole_ssm.data.reading import SOURCES
from recbole_ssm.options import ArgParser

DESCRIPTION = """\
Convert raw data to RecBole atomic files (DATA_PATH/NAME/NAME.inter, .item/.user, NAME.yaml,
summary.txt); runs of the data set read its NAME.yaml. Rows are ordered by (user, timestamp,
file position); exact duplicates are dropped; users and items are k-core filtered.
Sources:
  movielens   ml-1m.zip, its folder or ratings.dat (UserID::MovieID::Rating::Timestamp),
              or the ml-20m/25m ratings.csv; movies/users files become .item/.user
  amazon2023  Amazon Reviews 2023 <Category>.jsonl(.gz); meta_<Category>.jsonl(.gz) -> .item
  seqtext     SASRec / S3-Rec text: `user item` or `user item1 item2 ...` a line, in time order
  csv         your own events: a CSV / TSV / semicolon file (.gz too) or Parquet with a header; the
              user, item and time columns are found by name (user_id, item_id, timestamp, ...) or
              given with --user-col/--item-col/--time-col; times are epoch seconds, epoch ms
              (numbers from 1e11 up) or ISO-8601 (naive = UTC)
"""


def build_parser(prog: str = "python -m recbole_ssm.data prepare") -> argparse.ArgumentParser:
    p = ArgParser(prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=SOURCES, help="raw layout of --input")
    p.add_argument("--input", required=True, help="raw file (or MovieLens zip / folder)")
    p.add_argument("--output", help="output folder (default dataset/NAME)")
    p.add_argument("--name", help="dataset name (default: the --output folder name, else from --input)")
    p.add_argument("--kcore", type=int, default=5,
                   help="iterative k-core, users and items (default 5; 0: off)")
    p.add_argument("--min-rating", type=float,
                   help="drop rows rated below R (movielens, amazon2023; csv with --rating-col)")
    p.add_argument("--max-bad", type=float, default=0.001,
                   help="fail when more than this fraction of lines is malformed (default 0.001)")
    p.add_argument("--meta", help="amazon2023: meta_<Category>.jsonl(.gz) (default: found beside --input)")
    for role, names in (("user", "user_id, user, userId, ..."), ("item", "item_id, item, itemId, movieId, ..."),
                        ("time", "timestamp, time, ts, datetime, ...")):
        p.add_argument(f"--{role}-col", metavar="NAME",
                       help=f"csv: the {role} column, named exactly (default: the first of {names} in the header)")
    p.add_argument("--rating-col", metavar="NAME", help="csv: the rating column (default: no rating)")
    p.add_argument("--max-item-list-length", type=int,
                   help="MAX_ITEM_LIST_LENGTH in the yaml (default 200 movielens, 50 otherwise)")
    p.add_argument("--properties-dir",
                   help="also write dataset/NAME.yaml into this properties folder (default: only OUTPUT/NAME.yaml, "
                        "which every run of the data set reads)")
    p.add_argument("--last", type=int, metavar="N",
                   help="keep each user's last N interactions (after k-core; lifelong histories)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder and dataset yaml")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    return p


def main(argv: list[str] | None = None, prog: str = "run_recbole_ssm.py prepare") -> int:
    """Run ``prepare`` with ``argv`` (the words after ``prepare``); misuse raises UsageError."""
    import sys

    from recbole_ssm.data.pipeline import prepare

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    prepare(
        args.source,
        args.input,
        output=args.output,
        name=args.name,
        kcore=args.kcore,
        min_rating=args.min_rating,
        max_bad=args.max_bad,
        force=args.force,
        properties_dir=args.properties_dir,
        meta=args.meta,
        max_item_list_length=args.max_item_list_length,
        verbose=not args.quiet,
        last=args.last,
        columns={"user": args.user_col, "item": args.item_col, "time": args.time_col, "rating": args.rating_col},
    )
    return 0
