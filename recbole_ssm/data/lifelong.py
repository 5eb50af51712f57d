"""A synthetic lifelong data set whose next item depends on interests seen long ago.

``python -m recbole_ssm.data.lifelong --output dataset/lifelong-synth [--users 500] [--length 2000]``

Items fall into ``topics`` equal blocks. Each user has ``personal`` topics of their own. Every
event is drawn from one of the user's personal topics with probability ``rate``, else from a
topic drawn uniformly at random (noise); the user's last two events (RecBole's validation and
test targets under leave-one-out) are always personal. With the default ``rate`` of 0.02, the
last 50 events hold one personal event on average and the whole history of 2,000 about 40, so
a model that reads the long history can learn which topics are the user's, and one truncated
to the last 50 items mostly cannot. Items within a topic are uniform, so the best possible
Hit@10 is about ``10 / topic size`` for a model that knows the user's topics (and much less
for one that does not). The same seed gives the same files.

``--topics`` equal to ``--items`` makes every topic one item: a user's own items then recur
through the whole history.

``--burst B`` makes the events come in runs on one topic, of geometric length with mean ``B``
(each event ends its run with probability 1/B), so most next items follow from the last few events
and a model learns the topics from them. Each run is, with probability ``rate``, a *returning
interest*: a personal topic that does not occur in the ``--gap`` events before it (default 50;
if every personal topic does, any personal topic); else a random topic. The two targets each
start a returning interest. So the targets follow the same rule as the training events that start
one (``rate / B`` of all events), and a model that reads only the last ``gap`` events cannot tell
which personal topics are left, while one that reads the whole history can: the interest it needs
last showed up long before.

``--counting-hit 50,2000`` prints, instead of writing files, the Hit@10 on each user's last event
of a rule that knows the topics and counts them in the last L events (``counting_hit``; with
``--burst``, the topics of the last ``gap`` events ranked last): what reading L events can give.

The events are written in the seqtext layout and converted by ``prepare`` (no k-core filter),
so the output is ordinary RecBole atomic files with their ``NAME.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

from recbole_ssm.errors import UsageError
from recbole_ssm.options import ArgParser, Opt


def generate(users: int, length: int, items: int, topics: int, personal: int, rate: float,
             seed: int, burst: int = 0, gap: int = 50) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's item ids (1..items) in time order, and each user's personal topics.

    ``burst`` 0: every event draws its own topic. ``burst`` B >= 1: runs of mean length B on one
    topic (see the module's docstring, and ``_bursts``)."""
    if not (users >= 1 and length >= 3 and topics >= 1 and 1 <= personal <= topics and items >= topics
            and 0.0 <= rate <= 1.0 and burst >= 0 and gap >= 1):
        raise UsageError(
            f"lifelong: need users >= 1, length >= 3, 1 <= personal <= topics <= items, 0 <= rate <= 1, "
            f"burst >= 0 and gap >= 1 (got users={users}, length={length}, items={items}, topics={topics}, "
            f"personal={personal}, rate={rate}, burst={burst}, gap={gap})"
        )
    rng = np.random.default_rng(seed)
    size = items // topics  # items per topic; the remainder is never used
    out, owns = [], []
    for _ in range(users):
        own = rng.choice(topics, size=personal, replace=False)
        if burst:
            topic = _bursts(rng, length, topics, own, rate, burst, gap)
        else:
            is_personal = rng.random(length) < rate
            is_personal[-2:] = True
            topic = np.where(is_personal, own[rng.integers(0, personal, length)], rng.integers(0, topics, length))
        out.append(topic * size + rng.integers(0, size, length) + 1)
        owns.append(np.sort(own))
    return out, owns


def _bursts(rng: np.random.Generator, length: int, topics: int, own: np.ndarray, rate: float, burst: int,
            gap: int) -> np.ndarray:
    """One user's topic per event under ``--burst``: runs of geometric length (mean ``burst``), each
    on a returning interest (a personal topic absent from the ``gap`` events before the run, when
    one is) with probability ``rate``, else on a random topic; the last two events each start a
    returning interest."""

    def returning(end: int) -> int:
        left = own[~np.isin(own, topic[max(0, end - gap) : end])]
        choices = left if len(left) else own
        return int(choices[rng.integers(0, len(choices))])

    topic = np.empty(length, dtype=np.int64)
    pos = 0
    while pos < length - 2:
        run = min(int(rng.geometric(1.0 / burst)), length - 2 - pos)
        topic[pos : pos + run] = returning(pos) if rng.random() < rate else int(rng.integers(0, topics))
        pos += run
    for j in (length - 2, length - 1):
        topic[j] = returning(j)
    return topic


def counting_hit(histories: list[np.ndarray], items: int, topics: int, length: int, k: int = 10,
                 skip_recent: int = 0) -> float:
    """Hit@k on each user's last event of a rule that knows the topics and reads the ``length``
    events before it: items ranked by how often their topic occurs there, then by how often the
    item itself does (ties by item id). What a model reading that many events can reach (about),
    and what one reading fewer cannot. ``skip_recent`` N ranks the topics of the last N events
    after all others (the ``--burst`` data's targets are never among them)."""
    size = items // topics
    topic_of = (np.arange(1, items + 1) - 1) // size  # item id - 1 -> topic
    hits = 0
    for seq in histories:
        context = seq[:-1][-length:]
        topic_count = np.bincount(topic_of[context - 1], minlength=topics)
        item_count = np.bincount(context, minlength=items + 1)[1:]
        score = topic_count[topic_of] * (len(context) + 1) + item_count  # topic first, then the item
        if skip_recent:
            recent = np.zeros(topics, dtype=bool)
            recent[topic_of[seq[:-1][-skip_recent:] - 1]] = True
            score = score - recent[topic_of] * (len(context) + 1) ** 2  # below every other topic
        top = np.argsort(-score, kind="stable")[:k] + 1
        hits += int(seq[-1] in top)
    return hits / len(histories)


def write(output: str, users: int = 500, length: int = 2000, items: int = 4000, topics: int = 200,
          personal: int = 3, rate: float = 0.02, seed: int = 0, max_item_list_length: int | None = None,
          force: bool = False, verbose: bool = True, burst: int = 0, gap: int = 50) -> dict:
    """Generate and convert to ``output`` (a folder named like the data set); returns the summary."""
    from recbole_ssm.data.pipeline import prepare

    histories, _ = generate(users, length, items, topics, personal, rate, seed, burst, gap)
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "lifelong.txt")
        with open(text, "w", encoding="utf-8") as f:
            for u, seq in enumerate(histories, 1):
                f.write(f"u{u} " + " ".join(f"i{i}" for i in seq.tolist()) + "\n")
        return prepare("seqtext", text, output=output, kcore=0, force=force, verbose=verbose,
                       max_item_list_length=max_item_list_length or length)


def main(argv: list[str] | None = None) -> int:
    from recbole_ssm.entry import guarded

    return guarded(_main, sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    p = ArgParser(prog="python -m recbole_ssm.data.lifelong", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output",
                   help="output folder, named like the data set (e.g. dataset/lifelong-synth)")
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--length", type=int, default=2000, help="events per user")
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--topics", type=int, default=200)
    p.add_argument("--personal", type=int, default=3, help="personal topics per user")
    p.add_argument("--rate", type=float, default=0.02, help="share of events from personal topics")
    p.add_argument("--burst", type=int, default=0,
                   help="events come in runs on one topic of this mean length (0: each event its own topic)")
    p.add_argument("--gap", type=int, default=50,
                   help="with --burst: a returning interest (each target is one) is absent from this many "
                        "events before it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-item-list-length", type=int, help="MAX_ITEM_LIST_LENGTH in NAME.yaml (default --length)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--counting-hit", metavar="L,L,...",
                   help="print Hit@10 on the last event of the counting rule (counting_hit) reading L events, "
                        "for each L, instead of writing files")
    args = p.parse_args(argv)
    if args.counting_hit:
        lengths = Opt(None, "ints", minimum=1).read("counting-hit", args.counting_hit)
        histories, _ = generate(args.users, args.length, args.items, args.topics, args.personal, args.rate, args.seed,
                                args.burst, args.gap)
        for n in lengths:
            hit = counting_hit(histories, args.items, args.topics, n, skip_recent=args.gap if args.burst else 0)
            print(f"L={n}\thit@10={hit:.4f}")
        return 0
    if not args.output:
        raise UsageError("lifelong: --output is required: the folder to write, named like the data set "
                         "(e.g. --output dataset/lifelong-synth)")
    write(args.output, args.users, args.length, args.items, args.topics, args.personal, args.rate, args.seed,
          args.max_item_list_length, args.force, burst=args.burst, gap=args.gap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
