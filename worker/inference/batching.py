"""Dynamic batching: many caller threads submit one item each; one worker thread runs them in batches.

The worker thread waits for a first item, then keeps collecting for a short window (or until the batch is full),
hands the batch to ``run_batch`` and resolves each caller's future with its own result or exception. Callers
that gave up (a cancelled future) are dropped before the batch runs. An optional ``on_start`` (loading a model)
runs on the worker thread before the first batch; if it fails, every pending and future item gets that error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

import structlog

Item = TypeVar("Item")
Result = TypeVar("Result")

log = structlog.get_logger(__name__)


class BatcherClosed(RuntimeError):
    """Raised for items submitted to (or still queued in) a batcher that is shutting down."""


class DynamicBatcher(Generic[Item, Result]):
    """Collect items from many threads into batches for one worker thread."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], Sequence[Result | BaseException]],
        *,
        max_batch_size: int,
        wait_s: float,
        on_start: Callable[[], None] | None = None,
        name: str = "guardq-batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run_batch = run_batch
        self._max = max_batch_size
        self._wait_s = max(0.0, wait_s)
        self._on_start = on_start
        self._queue: queue.Queue[tuple[Item, Future[Result]] | None] = queue.Queue()
        self._closed = threading.Event()
        self._started = threading.Event()
        self.start_error: BaseException | None = None
        self.batches_run = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        """True once ``on_start`` finished successfully and batches are being served."""
        return self._started.is_set() and self.start_error is None

    def submit(self, item: Item) -> Future[Result]:
        """Queue one item; its future resolves with the item's result or exception."""
        future: Future[Result] = Future()
        if self._closed.is_set():
            future.set_exception(BatcherClosed("the inference backend is closed"))
            return future
        if self.start_error is not None:
            future.set_exception(self.start_error)
            return future
        self._queue.put((item, future))
        return future

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking items, let the running batch finish, fail whatever is still queued."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._drain(BatcherClosed("the inference backend closed before this request ran"))

    def _drain(self, error: BaseException) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is not None and entry[1].set_running_or_notify_cancel():
                entry[1].set_exception(error)

    def _serve(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except BaseException as exc:  # the load failed: every request gets the reason
                log.error("inference_backend_start_failed", error=repr(exc))
                self.start_error = exc
                self._started.set()
                self._drain(exc)
                return
        self._started.set()
        while not self._closed.is_set():
            batch = self._collect()
            if batch:
                self._run(batch)

    def _collect(self) -> list[tuple[Item, Future[Result]]]:
        first = self._queue.get()
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self._wait_s
        while len(batch) < self._max:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                self._closed.set()
                break
            batch.append(entry)
        return [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]

    def _run(self, batch: list[tuple[Item, Future[Result]]]) -> None:
        self.batches_run += 1
        try:
            results = self._run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # one failure answers every caller of this batch
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
