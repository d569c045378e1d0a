"""Group commit: database work from many callers, written by one thread, many items per
transaction.

`BatchWriter.submit(work)` queues `work(session)` and returns a Future of its result. The
writer thread takes whatever is queued (up to `max_batch` items) as soon as it is free,
runs it all in one transaction and commits once: no item waits for a timer, and items that
arrive while a transaction runs share the next one. So a commit (an fsync on SQLite, a round
trip on PostgreSQL) is paid per batch, not per item, and SQLite's one writer never sleeps in
its busy handler for this process's own transactions.

- A batch that fails is written again one item at a time, so a bad item fails alone and each
  item stays atomic (all of it or none); a database that is unreachable fails the whole
  batch at once instead of being retried item by item.
- Each item's Future gets its result or its exception (that is how failures surface; the
  writer logs each failed batch once); an item is only done once its transaction committed.
- The queue is bounded: a full queue raises `WriterBusy` at once, never blocks the caller.
- `close()` refuses new items (`WriterClosed`) and writes every item already accepted
  before the thread ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from reliability.db import DatabaseError

log = logging.getLogger("reliability.writer")

T = TypeVar("T")
Work = Callable[[Session], Any]

MAX_BATCH = 200
MAX_QUEUE = 10_000
_STOP = object()


class WriterBusy(Exception):
    """The queue is full: the database cannot keep up; retry later."""


class WriterClosed(Exception):
    """The writer is closing (the daemon stops): nothing new is accepted."""


def _unreachable(exc: BaseException) -> bool:
    # The database itself failed (down, locked, connection lost): every item would fail the
    # same way, so retrying them one by one would only multiply the waits.
    return isinstance(exc, DatabaseError | OperationalError | InterfaceError)


class BatchWriter:
    """One writer thread over `sessions` (a new Session per transaction); started by the
    first `submit`."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        *,
        name: str = "writer",
        max_batch: int = MAX_BATCH,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self._sessions = sessions
        self._name = name
        self._max_batch = max_batch
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, work: Callable[[Session], T]) -> Future[T]:
        """Queue `work`; its Future completes once the transaction that ran it committed
        (or with the exception that failed it). WriterBusy, WriterClosed: not queued."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise WriterClosed(f"{self._name} is closing")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait((work, future))
            except queue.Full:
                raise WriterBusy(
                    f"{self._name}: {self._queue.maxsize} items already wait for the database"
                ) from None
        return future

    def close(self, timeout: float = 5.0) -> bool:
        """Accept nothing more, write what was accepted, stop the thread; False when the
        thread is still writing after `timeout` seconds (a database that hangs)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return True
        self._queue.put(_STOP)  # after every accepted item: the queue is FIFO
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._write([(w, f) for w, f in batch if f.set_running_or_notify_cancel()])
            if stop:
                return

    def _write(self, batch: list[tuple[Work, Future[Any]]]) -> None:
        if not batch:
            return
        try:
            with self._sessions() as session, session.begin():
                results = [work(session) for work, _ in batch]
        except Exception as exc:  # every failure goes to its item's Future
            if len(batch) == 1 or _unreachable(exc):
                log.warning(
                    "%s: a transaction of %d item(s) failed: %s",
                    self._name,
                    len(batch),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )
                for _, future in batch:
                    future.set_exception(exc)
                return
            for one in batch:  # the batch rolled back: each item alone, so one bad item fails alone
                self._write([one])
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
