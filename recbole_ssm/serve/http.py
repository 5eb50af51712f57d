"""The service's HTTP API: an ASGI app (FastAPI) over a :class:`~recbole_ssm.serve.service.Service`.

``run_recbole_ssm.py serve`` runs it with uvicorn; :func:`create_app` gives the app for any other
ASGI server or a test client. This is the one module of ``recbole_ssm.serve`` that needs the
``[serve]`` extra (FastAPI, uvicorn).

Endpoints (JSON in and out; the OpenAPI page is at ``/docs``, the schema at ``/openapi.json``):

- ``GET /health``: the model, the data set, the users whose states are cached, ...
- ``POST /users/{user}/events`` with ``{"items": ["i1", ...]}``: appends the events (oldest
  first) and advances the user's state; answers with the number of events the user now has,
  once they are durable (with ``--state_dir``).
- ``GET /users/{user}/recommendations?k=10&exclude_seen=true``: the user's top k items.

Errors answer ``{"detail": "<one line>"}`` and change nothing:

- 400: a body that is not JSON; 415: a body not sent as ``Content-Type: application/json``;
- 422: an unknown item, an empty item list, k out of range, a body or parameter of the wrong shape;
- 404: recommendations to a user with no history;
- 503: events that cannot be stored (a log that cannot be written, or the service shutting down).

The endpoints are plain functions, which FastAPI runs on its thread pool: model compute and the
wait for the log's fsync stay off the event loop, and requests of different users run in parallel.
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from recbole_ssm.serve.service import MAX_BATCH, RequestError, Service

USER = Path(description="The user's token: a user of the data set the model was trained on starts from their "
                        "history in it, any other user from the empty history.")


class Events(BaseModel):
    """New events of one user, oldest first."""

    items: list[str] = Field(min_length=1, max_length=MAX_BATCH,
                             description="Item tokens of the data set the model was trained on, oldest first.",
                             examples=[["242", "302"]])


class EventsAccepted(BaseModel):
    """The events were appended (and, with a state folder, are durable)."""

    user: str = Field(description="The user's token.")
    events: int = Field(description="The number of events the user now has: the data set's history plus every "
                                    "event posted.")


class Recommendations(BaseModel):
    """A user's top items, best first."""

    user: str = Field(description="The user's token.")
    items: list[str] = Field(description="Item tokens, best first (fewer than k where exclude_seen leaves fewer).")
    scores: list[float] = Field(description="The model's score of each item (higher is better).")


class Health(BaseModel):
    """What the service runs and holds."""

    model: str = Field(description="The model's name, e.g. Mamba2Rec.")
    dataset: str = Field(description="The data set the model was trained on.")
    stepwise: bool = Field(description="Whether an event updates the user's state in one step (else a "
                                       "recommendation re-encodes the user's last MAX_ITEM_LIST_LENGTH events).")
    users_cached: int = Field(description="Users whose states are held in memory.")
    max_users_in_memory: int | None = Field(description="The bound on users_cached (null: the model keeps no state).")
    users_with_events: int = Field(description="Users with at least one posted event.")
    events_appended: int = Field(description="Events posted, over all users.")
    items: int = Field(description="Items in the catalogue: the largest k.")
    max_length: int = Field(description="MAX_ITEM_LIST_LENGTH: the events a re-encoding reads.")
    state_dir: str | None = Field(description="The folder of the event log and snapshots (null: memory only).")
    log_records: int | None = Field(description="Batches logged since the service started.")
    log_fsyncs: int | None = Field(description="fsyncs of the log since the service started (group commit: "
                                               "one covers every batch waiting).")
    model_batches: int = Field(description="Batches the model has run (requests waiting together run as one).")
    model_jobs: int = Field(description="Requests the model has run: model_jobs / model_batches is the mean batch.")


class ErrorBody(BaseModel):
    """A refused request; nothing changed."""

    detail: str = Field(description="One line: what was wrong.")


ERRORS = {
    400: {"model": ErrorBody, "description": "The body is not JSON."},
    422: {"model": ErrorBody, "description": "An unknown item, an empty item list, k out of range, or a body or "
                                             "parameter of the wrong shape."},
    415: {"model": ErrorBody, "description": "The body is not sent as Content-Type: application/json."},
    503: {"model": ErrorBody, "description": "The events cannot be stored (the log cannot be written, or the "
                                             "service is shutting down)."},
}


def one_line(exc: RequestValidationError) -> tuple[int, str]:
    """FastAPI's validation errors as (status, one line): 400 for a body that is not JSON."""
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            return 400, f"the body is not valid JSON: {error.get('ctx', {}).get('error', error.get('msg'))}"
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {first.get('msg')}{more}" if where else f"{first.get('msg')}{more}"


def create_app(service: Service) -> FastAPI:
    """The ASGI app over ``service``; closing the app (its lifespan's end: uvicorn on SIGTERM or
    SIGINT, a test client leaving its ``with``) closes the service, which writes a snapshot."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        try:
            await anyio.to_thread.run_sync(service.close)
        except Exception as exc:  # the events stay in the log; the next start replays it
            app.state.shutdown_error = exc
            print(f"error: the snapshot on shutdown failed: {exc}", file=sys.stderr, flush=True)

    from recbole_ssm import __version__

    app = FastAPI(
        title="recbole-ssm recommendations",
        version=__version__,
        description=("Top-k items from a trained sequential recommender. Each user's state is kept and "
                     "advanced one event at a time where the model has a step API (Mamba4Rec, Mamba2Rec, "
                     "RecMamba); other models re-encode the user's last MAX_ITEM_LIST_LENGTH events. With a "
                     "state folder, an event is durable once its POST is answered."),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.shutdown_error = None

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and kind and kind != "application/json" and not kind.endswith("+json"):
            return JSONResponse({"detail": f"the body must be JSON sent as Content-Type: application/json, not {kind}"},
                                status_code=415)
        status, message = one_line(exc)
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.get("/health", response_model=Health, summary="What the service runs and holds")
    def health() -> dict:
        return service.health()

    @app.post("/users/{user}/events", response_model=EventsAccepted, responses=ERRORS,
              summary="Append a user's new events")
    def post_events(body: Events, user: str = USER) -> EventsAccepted:
        """Appends the events to the user's history and advances the user's state one step an event.
        With a state folder, answers once the events are durable (written and fsync'ed to the log)."""
        return EventsAccepted(user=user, events=service.post_events(user, body.items))

    @app.get("/users/{user}/recommendations", response_model=Recommendations,
             responses={**ERRORS, 404: {"model": ErrorBody, "description": "The user has no history."}},
             summary="A user's top k items")
    def recommendations(user: str = USER,
                        k: int = Query(10, description="How many items: 1 to the catalogue's size."),
                        exclude_seen: bool = Query(True, description="Leave out the items of the user's history."),
                        ) -> Recommendations:
        items, scores = service.recommend(user, k, exclude_seen)
        return Recommendations(user=user, items=items, scores=scores)

    return app
