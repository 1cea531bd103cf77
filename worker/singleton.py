"""One instance per process, built lazily and thread-safely on first use (worker runtimes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Closeable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closeable)


class PerProcess(Generic[T]):
    """Holds the process's one ``T``: the threads pool has no per-child init hook, so it is built on first use."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._value: T | None = None

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
                value = self._value
        return value

    def close(self) -> None:
        with self._lock:
            if self._value is not None:
                self._value.close()
                self._value = None
