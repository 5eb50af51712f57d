"""Generated raw files in the Amazon Reviews 2023 layout, for tests and memory measurements.

``python -m recbole_ssm.data.synthetic --lines 2000000 --out /tmp/Synthetic.jsonl.gz``
writes a review file (and ``meta_Synthetic.jsonl.gz`` beside it with ``--meta``). Users and
items follow a skewed (Zipf-like) popularity so k-core filtering has work to do.
"""

from __future__ import annotations

import gzip
import json
import os
import random

from recbole_ssm.options import ArgParser

_WORDS = ("good great fine bad okay smells lovely works broke cheap price quality skin hair "
          "color soft dry oily bottle cream would buy again return small large").split()


def _open(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
    return open(path, "w", encoding="utf-8")


def write_amazon2023(path: str, lines: int, users: int, items: int, seed: int = 0,
                     meta: str | None = None, text_words: int = 30) -> None:
    """Write ``lines`` review lines (and optionally a meta file for every item)."""
    rng = random.Random(seed)
    user_ids = [f"AG{rng.getrandbits(104):026X}" for _ in range(users)]
    item_ids = [f"B0{rng.getrandbits(40):010X}" for _ in range(items)]
    # skewed popularity: index = floor(n * u^2)
    with _open(path) as f:
        for _ in range(lines):
            u = user_ids[int(users * rng.random() ** 2)]
            parent = item_ids[int(items * rng.random() ** 2)]
            text = " ".join(rng.choice(_WORDS) for _ in range(text_words))
            obj = {"rating": float(rng.randint(1, 5)), "title": "Review title", "text": text, "images": [],
                   "asin": parent[:-1] + "V", "parent_asin": parent, "user_id": u,
                   "timestamp": 1_500_000_000_000 + rng.randrange(200_000_000_000),
                   "helpful_vote": rng.randrange(10), "verified_purchase": rng.random() < 0.9}
            f.write(json.dumps(obj) + "\n")
    if meta:
        with _open(meta) as f:
            for k, parent in enumerate(item_ids):
                obj = {"main_category": "All Beauty", "title": f"Product {k} \"deluxe\"\tedition",
                       "average_rating": round(1 + 4 * rng.random(), 1), "rating_number": rng.randrange(1000),
                       "features": [], "description": [], "price": None, "images": [], "videos": [],
                       "store": f"Store {k % 7}", "categories": [], "details": {}, "parent_asin": parent,
                       "bought_together": None}
                f.write(json.dumps(obj) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m recbole_ssm.data.synthetic", description=__doc__)
    p.add_argument("--out", required=True, help="review file to write (.jsonl or .jsonl.gz)")
    p.add_argument("--lines", type=int, default=2_000_000)
    p.add_argument("--users", type=int, default=0, help="default lines/8")
    p.add_argument("--items", type=int, default=0, help="default lines/20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--meta", action="store_true", help="also write meta_<name> beside --out")
    a = p.parse_args(argv)
    folder, base = os.path.split(a.out)
    os.makedirs(folder or ".", exist_ok=True)
    meta = os.path.join(folder, "meta_" + base) if a.meta else None
    write_amazon2023(a.out, a.lines, a.users or max(a.lines // 8, 1), a.items or max(a.lines // 20, 1),
                     a.seed, meta)
    return 0


if __name__ == "__main__":
    from recbole_ssm.entry import guarded

    raise SystemExit(guarded(main))
