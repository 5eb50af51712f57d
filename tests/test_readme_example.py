"""The README's "your own data" Python example runs as written: a CSV of events in, every user's
top 10 out, one new event observed."""

from __future__ import annotations

import csv
import os
import re
from datetime import datetime, timedelta, timezone

import numpy as np

from tests.test_docs import ROOT


def readme_python_example() -> str:
    """The first ```python block after "The same from Python:" in the README."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    after = text[text.index("The same from Python:"):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def write_events(path: str, customers: int = 60, products: int = 40, seed: int = 0) -> None:
    """customer_id,product_id,event_time: each customer buys from a few favourite products, ISO times."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["customer_id", "product_id", "event_time"])
        for c in range(1, customers + 1):
            favourites = rng.choice(np.arange(1, products + 1), size=6, replace=False)
            for e in range(int(rng.integers(12, 25))):
                item = favourites[e % 6] if rng.random() < 0.7 else rng.integers(1, products + 1)
                when = start + timedelta(hours=int(c * 1000 + e * 3))
                out.writerow([f"c{c}", f"p{item}", when.isoformat().replace("+00:00", "Z")])


def test_readme_python_example_runs_as_written(tmp_path, capsys):
    write_events(str(tmp_path / "events.csv"))
    exec(compile(readme_python_example(), "README.md", "exec"), {"__name__": "readme"})
    with open(tmp_path / "top10.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    users = {r["user"] for r in rows}
    assert len(users) == 60 and len(rows) == 600
    assert all(sum(r["user"] == u for r in rows) == 10 for u in ("c1", "c42", "c60"))
    printed = capsys.readouterr().out
    assert printed.count("c42") == 5 and "p17" not in printed.split("rank", 1)[-1]  # p17 is now seen
