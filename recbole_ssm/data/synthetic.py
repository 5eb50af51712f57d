"""Generated raw files, for tests and measurements at sizes no shared data set has.

``python -m recbole_ssm.data.synthetic --lines 2000000 --out /tmp/Synthetic.jsonl.gz``
writes a review file in the Amazon Reviews 2023 layout (and ``meta_Synthetic.jsonl.gz`` beside
it with ``--meta``). Users and items follow a skewed (Zipf-like) popularity so k-core filtering
has work to do; the order of a user's reviews is random (nothing to learn).

``python -m recbole_ssm.data.synthetic --shape beauty2023 --out /tmp/beauty23.csv`` writes an
event CSV (``user_id,item_id,timestamp``) that ``prepare csv`` reads, of the shape of Amazon
Reviews 2023 Beauty and Personal Care after 5-core (about 730 k users, 208 k items, 6.6 M
events), whose next items can be learnt: see :func:`write_interest_events`.
"""

from __future__ import annotations

import gzip
import json
import os
import random

import numpy as np

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


# Shapes for write_interest_events: users, items and mean events a user before 5-core; chosen so
# that 5-core leaves about the named data set's size (Amazon Reviews 2023 Beauty and Personal
# Care, 5-core: 729,576 users, 207,649 items, 6,624,441 ratings).
SHAPES = {"beauty2023": {"users": 732_000, "items": 214_000, "mean_length": 9.1, "zipf": 0.6}}


def write_interest_events(path: str, users: int, items: int, mean_length: float, seed: int = 0,
                          cluster_size: int = 100, p_next: float = 0.5, p_switch: float = 0.15,
                          zipf: float = 1.0) -> int:
    """Write an event CSV of ``users`` whose histories follow their interests; return the rows.

    Items fall into clusters of ``cluster_size`` (an interest, e.g. a product line), ordered
    within a cluster as a chain. Clusters and the items of a cluster are Zipf-like popular. Each
    user holds two interests. A history starts at a popular item of the first; each next event is
    the chain's successor of the previous item (a step of 1-3 along it) with probability
    ``p_next``, another of the user's interests with probability ``p_switch`` (a popular item
    there), else a popular item of the current interest. So the next item is partly predictable
    from the last few, partly from the user's interests, partly popularity. Lengths are 5 plus a
    geometric tail of mean ``mean_length - 5``; times are seconds, a user's increasing.
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(1, items // cluster_size)
    size = items // n_clusters  # items a cluster; the remainder is never drawn
    within = 1.0 / np.arange(1, size + 1) ** zipf  # popularity inside a cluster, by rank
    within_cdf = np.cumsum(within) / within.sum()
    cluster_w = 1.0 / np.arange(1, n_clusters + 1) ** 0.6
    cluster_p = cluster_w / cluster_w.sum()
    # item id of (cluster c, chain position k): a random permutation, so ids carry no order
    item_of = rng.permutation(n_clusters * size).reshape(n_clusters, size)

    def popular(n: int) -> np.ndarray:  # chain positions of n popular items
        return np.minimum(np.searchsorted(within_cdf, rng.random(n)), size - 1)

    interests = rng.choice(n_clusters, size=(users, 2), p=cluster_p)  # (U, 2)
    lengths = 5 + rng.geometric(1.0 / max(1.0, mean_length - 4.0), size=users) - 1  # (U,)
    order = np.argsort(-lengths, kind="stable")  # longest first, so each step's users are a prefix
    lengths, interests = lengths[order], interests[order]
    offsets = np.r_[0, np.cumsum(lengths)]
    n_rows = int(offsets[-1])
    chosen = np.empty(n_rows, dtype=np.int64)
    which = np.zeros(users, dtype=np.int64)  # the interest each user is in (0 or 1)
    pos = popular(users)  # chain position of each user's last item
    for t in range(int(lengths.max())):
        active = int(np.searchsorted(-lengths, -t, side="left"))  # users with length > t
        if t:
            draw = rng.random(active)
            step = draw < p_next
            switch = (draw >= p_next) & (draw < p_next + p_switch)
            which[:active][switch] ^= 1
            jump = rng.integers(1, 4, size=active)
            pos_t = np.where(step, (pos[:active] + jump) % size, popular(active))
            pos[:active] = pos_t
        cl = interests[np.arange(active), which[:active]]
        chosen[offsets[:active] + t] = item_of[cl, pos[:active]]
    user_ids = np.repeat(np.arange(users), lengths)
    start = rng.integers(1_500_000_000, 1_600_000_000, size=users)
    gaps = rng.exponential(86_400.0 * 20, size=n_rows).astype(np.int64) + 1
    gaps[offsets[:-1]] = 0
    times = np.repeat(start, lengths) + _cumsum_by_run(gaps, offsets)
    tmp = path + ".tmp"
    with _open(tmp) as f:
        f.write("user_id,item_id,timestamp\n")
        for lo in range(0, n_rows, 1_000_000):
            hi = min(n_rows, lo + 1_000_000)
            f.writelines(f"U{a},I{b},{c}\n" for a, b, c in
                         zip(user_ids[lo:hi].tolist(), chosen[lo:hi].tolist(), times[lo:hi].tolist()))
    os.replace(tmp, path)
    return n_rows


def _cumsum_by_run(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each run ``offsets[j]:offsets[j + 1]``."""
    total = np.cumsum(values)
    base = np.repeat(total[offsets[:-1]] - values[offsets[:-1]], np.diff(offsets))
    return total - base


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m recbole_ssm.data.synthetic", description=__doc__)
    p.add_argument("--out", required=True, help="file to write: reviews (.jsonl or .jsonl.gz); with --shape "
                   "an event CSV (.csv or .csv.gz)")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="learnable events of a data set's 5-core shape (see write_interest_events)")
    p.add_argument("--scale", type=float, default=1.0, help="with --shape: users and items times this")
    p.add_argument("--lines", type=int, default=2_000_000)
    p.add_argument("--users", type=int, default=0, help="default lines/8")
    p.add_argument("--items", type=int, default=0, help="default lines/20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--meta", action="store_true", help="also write meta_<name> beside --out")
    a = p.parse_args(argv)
    folder, base = os.path.split(a.out)
    os.makedirs(folder or ".", exist_ok=True)
    if a.shape:
        shape = SHAPES[a.shape]
        rows = write_interest_events(a.out, max(1, round(shape["users"] * a.scale)),
                                     max(10, round(shape["items"] * a.scale)), shape["mean_length"], a.seed,
                                     zipf=shape["zipf"])
        print(f"wrote {rows} events to {a.out}")
        return 0
    meta = os.path.join(folder, "meta_" + base) if a.meta else None
    write_amazon2023(a.out, a.lines, a.users or max(a.lines // 8, 1), a.items or max(a.lines // 20, 1),
                     a.seed, meta)
    return 0


if __name__ == "__main__":
    from recbole_ssm.entry import guarded

    raise SystemExit(guarded(main))
