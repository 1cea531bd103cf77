"""DynamicBatcher: concurrent submissions become batches; every caller gets its own answer or error."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from worker.inference.batching import BatcherClosed, DynamicBatcher


class Recorder:
    """A run_batch that doubles numbers, fails on negatives, and remembers each batch it was given."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.batches.append(list(items))
        return [ValueError(f"negative {i}") if i < 0 else i * 2 for i in items]


def submit_concurrently(batcher: DynamicBatcher[int, int], items: list[int]) -> list[object]:
    barrier = threading.Barrier(len(items))
    results: list[object] = [None] * len(items)

    def call(index: int) -> None:
        barrier.wait(5)
        try:
            results[index] = batcher.submit(items[index]).result(timeout=10)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    return results


def test_concurrent_submissions_within_the_window_run_as_one_batch() -> None:
    """A generous window; the batch closes as soon as it is full, so the test does not wait it out."""
    recorder = Recorder()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_batch_size=5, wait_s=5.0)
    results = submit_concurrently(batcher, [1, 2, 3, 4, 5])
    batcher.close()
    assert [2, 4, 6, 8, 10] == results
    assert 1 == len(recorder.batches)
    assert [1, 2, 3, 4, 5] == sorted(recorder.batches[0])


def test_a_batch_never_exceeds_the_maximum_size() -> None:
    recorder = Recorder()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_batch_size=3, wait_s=0.5)
    results = submit_concurrently(batcher, list(range(7)))
    batcher.close()
    assert [i * 2 for i in range(7)] == results
    assert all(len(batch) <= 3 for batch in recorder.batches)
    assert 7 == sum(len(batch) for batch in recorder.batches)


def test_each_caller_gets_its_own_error_and_the_others_their_results() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), max_batch_size=8, wait_s=0.5)
    results = submit_concurrently(batcher, [1, -1, 3])
    batcher.close()
    assert 2 == results[0] and 6 == results[2]
    assert isinstance(results[1], ValueError)


def test_a_failing_batch_fails_every_caller_in_it_and_the_batcher_keeps_serving() -> None:
    calls = []

    def explode_once(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(explode_once, max_batch_size=8, wait_s=0.0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(1).result(timeout=10)
    assert 7 == batcher.submit(7).result(timeout=10)
    batcher.close()


def test_a_cancelled_request_is_dropped_before_its_batch_runs() -> None:
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_batch_size=1, wait_s=0.0)
    first = batcher.submit(1)  # occupies the worker thread until the gate opens
    second = batcher.submit(2)
    assert second.cancel()
    gate.set()
    assert 2 == first.result(timeout=10)
    assert 6 == batcher.submit(3).result(timeout=10)
    batcher.close()
    assert [[1], [3]] == recorder.batches


def test_a_failed_start_answers_every_request_with_its_error() -> None:
    def load() -> None:
        raise OSError("no such checkpoint")

    batcher: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), max_batch_size=4, wait_s=0.0, on_start=load)
    with pytest.raises(OSError, match="no such checkpoint"):
        batcher.submit(1).result(timeout=10)
    assert batcher.started is False
    assert isinstance(batcher.start_error, OSError)
    batcher.close()


def test_requests_after_close_fail_with_batcher_closed() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), max_batch_size=4, wait_s=0.0)
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(1).result(timeout=1)
