"""Serving a trained model: per-user states, an HTTP service, and what makes its events durable.

- ``state``: :class:`Recommender` (top-k items for users of a data set; a user's state stepped
  through new events) and :class:`StateCache` (users' states, least recently used out first).
- ``service``: :class:`Service`, the service without HTTP: users' appended events, their states
  in a bounded LRU, one user's requests serialised, every accepted event logged before it is
  acknowledged.
- ``log``: :class:`EventLog` (append-only, checksummed, group-committed records) and the
  snapshots that bound the log's replay.
- ``http``: the ASGI app (FastAPI), the only module that needs the ``[serve]`` extra.
- ``cli``: ``run_recbole_ssm.py serve``.

Importing this package needs neither FastAPI nor uvicorn.
"""

from recbole_ssm.serve.state import (
    Recommendation,
    Recommender,
    Request,
    StateCache,
    frame_rows,
    from_checkpoint,
    stepwise,
    user_histories,
    warn_unknown,
)

__all__ = [
    "EventLog",
    "Recommendation",
    "Recommender",
    "Request",
    "Service",
    "StateCache",
    "frame_rows",
    "from_checkpoint",
    "stepwise",
    "user_histories",
    "warn_unknown",
]


def __getattr__(name: str):
    """``Service`` and ``EventLog`` on first use: the state module alone loads for ``recommend``."""
    if name == "Service":
        from recbole_ssm.serve.service import Service

        return Service
    if name == "EventLog":
        from recbole_ssm.serve.log import EventLog

        return EventLog
    raise AttributeError(f"module 'recbole_ssm.serve' has no attribute {name!r}")
