"""Locks: many concurrent searches, one writer at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["ReadWriteLock", "SettingGate"]


class ReadWriteLock:
    """Readers share the lock; a writer holds it alone.

    Waiting writers go first, so a stream of searches cannot starve an ``add``.
    Not reentrant: a thread holding it must not acquire it again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class SettingGate:
    """Lets readers share an object as long as they want the same value of one setting.

    hnswlib keeps ``ef`` on the index, not per query: two concurrent searches with
    different ``ef`` would see each other's value. Searches that agree run together;
    one that needs another value waits until the others finish, then applies it.
    """

    def __init__(self, apply: Callable[[int], None]) -> None:
        self._apply = apply
        self._cond = threading.Condition(threading.Lock())
        self._value: int | None = None
        self._active = 0

    def forget(self) -> None:
        """The object was replaced: the next user applies its value again."""
        with self._cond:
            self._value = None

    @contextmanager
    def use(self, value: int) -> Iterator[None]:
        with self._cond:
            while self._active and self._value != value:
                self._cond.wait()
            if self._value != value:
                self._apply(value)
                self._value = value
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()
