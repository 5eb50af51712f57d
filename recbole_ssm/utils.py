"""Small helpers shared by the CLI, the models, the data converter and the benchmarks.

Importing this module does not import torch (the data converter's memory is the data's).
"""

from __future__ import annotations

import os
import tempfile


def count_parameters(model) -> tuple[int, int]:
    """(total parameters, parameters outside nn.Embedding layers): the seed paper's two columns."""
    import torch.nn as nn

    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False))
    return total, total - emb


def default_mode(base: int) -> int:
    """``base`` (0o666 for a file, 0o777 for a folder) less this process's umask: the mode an
    ordinary ``open`` or ``mkdir`` would have given (``mkstemp`` and ``mkdtemp`` give 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def best_epoch(valid_scores: list, bigger: bool = True) -> int | None:
    """The epoch of the checkpoint early stopping keeps: the first validation with the best score
    (RecBole's ``early_stopping`` replaces the best only on a strict improvement); None for none."""
    best = None
    for epoch, score in valid_scores:
        if best is None or (score > best[1] if bigger else score < best[1]):
            best = (epoch, score)
    return None if best is None else int(best[0])


def format_metrics(split: str, result: dict | None) -> str:
    """One split's metrics as the CLI prints them: ``test  hit@10=0.1234  ndcg@10=...``."""
    return f"{split:5s} " + "  ".join(f"{k}={float(v):.4f}" for k, v in (result or {}).items())
