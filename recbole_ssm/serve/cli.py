"""``run_recbole_ssm.py serve``: the HTTP recommendation service of a checkpoint (uvicorn)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help

USAGE = """\
usage: run_recbole_ssm.py serve --checkpoint=PATH [--host=127.0.0.1] [--port=8000] [--state_dir=DIR]
                                [--max_users_in_memory=10000]

An HTTP service (JSON) of a checkpoint's recommendations; the API's page is /docs.
  GET  /health                                        the model, the data set, the users cached
  POST /users/USER/events  {"items": ["I1", ...]}      append a user's events, oldest first
  GET  /users/USER/recommendations?k=10&exclude_seen=true   a user's top k items
A user of the data set starts from their history in it, any other user from the empty history.
  --checkpoint           a .pth file written by a training run
  --host, --port         where to listen (default 127.0.0.1:8000; --port=0 picks a free port)
  --state_dir            a folder for the event log and snapshots: an event is durable once its
                         POST is answered, and a restart with the same folder has every event.
                         Without it, events are kept in memory only and lost when the service stops
  --max_users_in_memory  users whose states are cached (least recently used out first; an evicted
                         state is rebuilt from the user's history when the user comes back)
SIGTERM or SIGINT (Ctrl-C) lets requests in flight finish, writes a snapshot and exits.
Needs the [serve] extra: pip install 'recbole-ssm[serve]'.
"""

OPTIONS = {
    "checkpoint": Opt(None),
    "host": Opt("127.0.0.1"),
    "port": Opt(8000, "whole", minimum=0),
    "state_dir": Opt(None),
    "max_users_in_memory": Opt(10_000, "whole", minimum=1),
}
EXTRA = "the service needs the serve extra: pip install 'recbole-ssm[serve]' (FastAPI and uvicorn)"


def check(opts: dict) -> dict:
    if opts["checkpoint"] is None:
        raise UsageError("serve needs --checkpoint=PATH (a .pth file written by a training run)")
    if opts["port"] > 65535:
        raise UsageError(f"--port takes a whole number from 0 to 65535, got {opts['port']}")
    folder = opts["state_dir"]
    if folder is not None:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"--state_dir={folder} is a file, not a folder")
        parent = os.path.dirname(os.path.abspath(folder))
        if not os.path.isdir(parent):
            raise UsageError(f"--state_dir={folder}: folder {parent} does not exist")
    return opts


def http_modules():
    """(recbole_ssm.serve.http, uvicorn); a one-line error where the [serve] extra is missing."""
    try:
        import uvicorn

        from recbole_ssm.serve import http
    except ImportError as exc:
        raise UsageError(f"{EXTRA}; missing: {exc.name or exc}") from None
    return http, uvicorn


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), before the model loads: a port in use is a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def main(argv: list[str]) -> int:
    if wants_help(argv) or any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    opts = check(parse(argv, OPTIONS, "serve", settings=False)[0])
    http, uvicorn = http_modules()
    sock = listen(opts["host"], opts["port"])
    try:
        return serve(opts, sock, http, uvicorn)
    finally:
        sock.close()


def serve(opts: dict, sock: socket.socket, http, uvicorn) -> int:
    import torch

    from recbole_ssm.serve.service import Service

    torch.set_num_threads(1)  # requests run in parallel threads; one core each, not all of them each
    logging.disable(logging.INFO)  # RecBole's INFO lines while the data set loads
    try:
        service = Service.from_checkpoint(opts["checkpoint"], state_dir=opts["state_dir"],
                                          max_users_in_memory=opts["max_users_in_memory"])
    finally:
        logging.disable(logging.NOTSET)
    host, port = sock.getsockname()[:2]
    say(f"serving {service.model_name} trained on {service.dataset_name} at http://{_url_host(host)}:{port} "
        f"(API: /docs)")
    if service.log is None:
        say("no --state_dir: events are kept in memory only and are lost when the service stops")
    else:
        got = service.recovered
        users = len(set(got.users) | {user for user, _ in got.batches})
        torn = f"; a torn last record dropped ({got.dropped_bytes} bytes)" if got.dropped_bytes else ""
        say(f"state in {service.log.folder}: {got.events} events of {users} users recovered{torn}")
    app = http.create_app(service)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    # uvicorn handles SIGTERM/SIGINT (a graceful stop: the app's lifespan ends, the service writes
    # its snapshot), then raises the signal again to the handlers it found: quiet ones, so that a
    # stop asked for is a clean exit.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        service.close()  # where the lifespan did not run (a failed start): snapshot all the same
    if app.state.shutdown_error is not None:
        return 1
    say("stopped" + (f"; snapshot written to {service.log.folder}" if service.log is not None else ""))
    return 0


def _stopped(sig, frame) -> None:
    """What a SIGTERM/SIGINT does once uvicorn has stopped: nothing more."""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def say(line: str) -> None:
    print(f"recbole-ssm serve: {line}", file=sys.stderr, flush=True)
