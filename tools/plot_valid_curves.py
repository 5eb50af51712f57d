"""Validation curves of finished `bench table` runs: a run record's validation score after every
epoch (its `valid_scores`), one line per record, into a PNG.

    python tools/plot_valid_curves.py OUT.png RECORD.json[=LABEL] [RECORD.json[=LABEL] ...] [--title=TEXT]
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    title = next((a.partition("=")[2] for a in argv if a.startswith("--title=")), "")
    args = [a for a in argv if not a.startswith("--title=")]
    if len(args) < 2 or not args[0].endswith(".png"):
        print("usage: python tools/plot_valid_curves.py OUT.png RECORD.json[=LABEL] ... [--title=TEXT]",
              file=sys.stderr)
        return 2
    curves = []  # (label, scores, metric): every record read and checked before anything is drawn
    for arg in args[1:]:
        path, _, label = arg.partition("=")
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"error: cannot read the run record {path}: {exc}", file=sys.stderr)
            return 2
        scores = record.get("valid_scores") or []
        if not scores:
            print(f"error: {path} has no validation scores (not a finished bench table run)", file=sys.stderr)
            return 2
        curves.append((label or os.path.basename(path), scores, record.get("valid_metric", "ndcg@10")))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recbole_ssm.bench.report import save_png

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, scores, _ in curves:
        ax.plot([e for e, _ in scores], [v for _, v in scores], label=label)
    metric = f"validation {curves[-1][2]}"
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    save_png(fig, args[0])
    plt.close(fig)
    print(f"wrote {args[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
