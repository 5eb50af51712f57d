"""What makes the service's events durable: an append-only event log with group commit, and
snapshots that bound its replay.

A state folder (``serve --state_dir=DIR``) holds:

- ``meta.json``: ``{"format": 1, "dataset": NAME}``, written when the folder is first used; a
  folder holds the events of one data set (item and user tokens are the data set's).
- ``events-00000007.log``: the log, in numbered segments. One record per accepted request, one
  line each: ``CRC32 JSON\\n``, where JSON is ``["user", ["item", ...]]`` (external tokens) and
  CRC32 (8 hex digits) is the checksum of the JSON's bytes.
- ``snapshot.json``: ``{"format": 1, "dataset": NAME, "segment": S, "users": {user: [item, ...]}}``,
  every user's appended events in the segments before S. It is written to a temp file, fsync'ed
  and renamed over the previous one; the segments it covers are deleted after the rename.

On start, :meth:`EventLog.open` reads the snapshot, then replays every segment from S on.

**When an event is durable.** :meth:`EventLog.append` returns once its record, and every record
queued before it, is written and fsync'ed; the service sends its 200 only after that. An
acknowledged event therefore survives the process being killed (kill -9) and, as far as the disk
honours fsync, the machine losing power. The window is the request in flight: an event whose
request got no answer (the process died between the record's write and the fsync's return, or
before its write) may or may not be there after a restart. A record torn by a crash during its
write fails its checksum (or lacks its newline) and is dropped, with anything after it in that
last segment: nothing after a torn record can have been acknowledged, since an fsync covers
every byte before it.

**Group commit.** Appenders queue their records and wait; one writer thread takes every record
queued so far, writes them with one ``write`` and one fsync, then releases all their waiters. With
c requests in flight, one fsync covers up to c records, so the fsync rate, not the request rate,
bounds the log (:attr:`EventLog.fsyncs` against :attr:`EventLog.records` shows the grouping).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import zlib
from dataclasses import dataclass, field

from recbole_ssm.errors import UsageError

FORMAT = 1
SEGMENT = re.compile(r"^events-(\d{8})\.log$")
SNAPSHOT = "snapshot.json"
META = "meta.json"

Batch = tuple[str, list[str]]  # (user token, item tokens), one accepted request


class LogError(OSError):
    """The event log cannot be written (disk full, I/O error): no event is accepted after it."""


def encode(user: str, items: list[str]) -> bytes:
    """One record: ``CRC32 JSON\\n`` (JSON in ASCII, so the record holds no newline of its own)."""
    payload = json.dumps([user, items], ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode(line: bytes) -> Batch | None:
    """A record's (user, items), or None for a damaged one (bad checksum, not the shape encoded)."""
    crc, _, payload = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(payload):
            return None
        user, items = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(user, str) or not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        return None
    return user, items


def read_segment(path: str) -> tuple[list[Batch], int, int]:
    """(the segment's records, the byte offset where the valid records end, its size): reading stops
    at the first record that is damaged or lacks its newline."""
    with open(path, "rb") as f:
        data = f.read()
    records: list[Batch] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        record = decode(data[pos:end]) if end >= 0 else None
        if record is None:
            break
        records.append(record)
        pos = end + 1
    return records, pos, len(data)


def fsync_folder(folder: str) -> None:
    """Make a file's creation, rename or deletion in ``folder`` durable (where folders can be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows: no folder handles; the rename is what there is
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, data: bytes) -> None:
    """``data`` to ``path`` whole or not at all: a temp file, fsync'ed, renamed, the folder fsync'ed."""
    from recbole_ssm.utils import default_mode

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode(0o666))  # mkstemp creates 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_folder(folder)


@dataclass
class Recovered:
    """What a state folder held: the snapshot's users, then the batches logged after it."""

    users: dict[str, list[str]] = field(default_factory=dict)
    batches: list[Batch] = field(default_factory=list)
    dropped_bytes: int = 0  # a torn tail cut off the last segment

    @property
    def events(self) -> int:
        return sum(len(v) for v in self.users.values()) + sum(len(items) for _, items in self.batches)


class EventLog:
    """The service's append-only event log in ``folder`` (see the module docstring): group-committed
    appends, snapshots, recovery. Thread-safe; call :meth:`open` once before appending."""

    def __init__(self, folder: str, dataset: str):
        self.folder = os.path.abspath(folder)
        self.dataset = dataset
        self.segment = 0  # the segment appended to
        self.records = 0  # records made durable since open
        self.fsyncs = 0
        self.segment_bytes = 0  # bytes in the segments not yet covered by a snapshot
        self._covered_bytes = 0  # of those, the bytes before the last rotate (a snapshot in progress)
        self._cond = threading.Condition()
        self._pending: list[bytes] = []
        self._queued = 0  # records ever queued (a record's ticket is the count after it)
        self._durable = 0  # records written and fsync'ed
        self._writing = False
        self._closing = False
        self._error: OSError | None = None
        self._fd: int | None = None
        self._writer: threading.Thread | None = None

    # -- the folder
    def _segments(self) -> list[int]:
        return sorted(int(m.group(1)) for m in map(SEGMENT.match, os.listdir(self.folder)) if m)

    def _segment_path(self, number: int) -> str:
        return os.path.join(self.folder, f"events-{number:08d}.log")

    def _check_meta(self) -> None:
        path = os.path.join(self.folder, META)
        if not os.path.exists(path):
            write_durably(path, json.dumps({"format": FORMAT, "dataset": self.dataset}).encode() + b"\n")
            return
        meta = self._read_json(path)
        if meta.get("format") != FORMAT:
            raise UsageError(f"--state_dir={self.folder}: format {meta.get('format')!r} of {path} is not "
                             f"{FORMAT}, the one this version writes")
        if meta.get("dataset") != self.dataset:
            raise UsageError(f"--state_dir={self.folder} holds events of data set {meta.get('dataset')!r}, not of "
                             f"{self.dataset!r} (the checkpoint's): use another folder")

    def _read_json(self, path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as f:
                out = json.load(f)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--state_dir={self.folder}: cannot read {os.path.basename(path)}: {exc}") from None
        if not isinstance(out, dict):
            raise UsageError(f"--state_dir={self.folder}: {os.path.basename(path)} is not a JSON object")
        return out

    def open(self) -> Recovered:
        """Read the snapshot and replay the log past it; cut a torn tail off the last segment;
        start a fresh segment and the writer thread. Returns what was recovered."""
        try:
            os.makedirs(self.folder, exist_ok=True)
            self._check_meta()
            return self._recover()
        except OSError as exc:
            raise UsageError(f"--state_dir={self.folder}: {exc.strerror or exc}") from None

    def _recover(self) -> Recovered:
        out = Recovered()
        first = 0
        path = os.path.join(self.folder, SNAPSHOT)
        if os.path.exists(path):
            snap = self._read_json(path)
            if snap.get("format") != FORMAT or snap.get("dataset") != self.dataset:
                raise UsageError(f"--state_dir={self.folder}: {SNAPSHOT} is of another format or data set")
            first, out.users = int(snap["segment"]), snap["users"]
        segments = self._segments()
        for number in segments:
            if number < first:  # covered by the snapshot; left by a stop between its rename and the clean-up
                os.remove(self._segment_path(number))
        segments = [n for n in segments if n >= first]
        for i, number in enumerate(segments):
            seg = self._segment_path(number)
            records, end, size = read_segment(seg)
            out.batches.extend(records)
            self.segment_bytes += end
            if end < size:
                if i + 1 < len(segments):
                    raise UsageError(f"{seg}: damaged record at byte {end}, and later segments follow: "
                                     "the event log is corrupt")
                with open(seg, "r+b") as f:  # the unacknowledged tail of a crash: gone, before new appends
                    f.truncate(end)
                    os.fsync(f.fileno())
                out.dropped_bytes = size - end
        self._start_segment(max(segments + [first - 1, 0]) + 1)
        self._writer = threading.Thread(target=self._write_loop, name="recbole-ssm-event-log", daemon=True)
        self._writer.start()
        return out

    def _start_segment(self, number: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self._segment_path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        fsync_folder(self.folder)
        self.segment = number

    # -- appending
    def append(self, user: str, items: list[str]) -> None:
        """Log one batch; returns once it is durable (written and fsync'ed). Raises :class:`LogError`
        when the log cannot be written: the batch may or may not be in it."""
        record = encode(user, items)
        with self._cond:
            if self._error is not None or self._closing:
                raise LogError(f"the event log in {self.folder} is closed"
                               + (f" after an error: {self._error}" if self._error else ""))
            self._pending.append(record)
            self._queued += 1
            ticket = self._queued
            self._cond.notify_all()
            while self._durable < ticket and self._error is None:
                self._cond.wait()
            if self._durable < ticket:
                raise LogError(f"cannot write the event log in {self.folder}: {self._error}")

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                last, self._writing = self._queued, True
            data = b"".join(batch)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                (getattr(os, "fdatasync", None) or os.fsync)(self._fd)
            except OSError as exc:
                with self._cond:
                    self._error, self._writing = exc, False
                    self._cond.notify_all()
                return
            with self._cond:
                self._durable, self._writing = last, False
                self.records += len(batch)
                self.fsyncs += 1
                self.segment_bytes += len(data)
                self._cond.notify_all()

    # -- snapshots
    def rotate(self) -> int:
        """Start a new segment and return its number: a snapshot of every event appended so far
        covers the segments before it. Call with no append in flight (the service's gate)."""
        with self._cond:
            while self._pending or self._writing:
                self._cond.wait()
            if self._error is not None:
                raise LogError(f"cannot write the event log in {self.folder}: {self._error}")
            self._covered_bytes = self.segment_bytes
            self._start_segment(self.segment + 1)
            return self.segment

    def write_snapshot(self, segment: int, users: dict[str, list[str]]) -> str:
        """Write ``users`` (every user's appended events, in the segments before ``segment``) as the
        snapshot, then delete those segments. Returns the snapshot's path."""
        path = os.path.join(self.folder, SNAPSHOT)
        body = {"format": FORMAT, "dataset": self.dataset, "segment": segment, "users": users}
        write_durably(path, json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii"))
        for number in self._segments():
            if number < segment:
                os.remove(self._segment_path(number))
        with self._cond:
            self.segment_bytes -= self._covered_bytes
            self._covered_bytes = 0
        return path

    def close(self) -> None:
        """Write what is queued, stop the writer and close the segment (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
