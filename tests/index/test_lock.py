"""The readers-writer lock and the ef gate, driven by real threads."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import pytest

from akidb_embed.index._lock import ReadWriteLock, SettingGate


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a real condition (no fixed sleeps: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)


def inside_read(thread: threading.Thread) -> bool:
    """Whether *thread* is running ``ReadWriteLock.read`` code (acquiring or releasing;
    while the caller holds the lock, that generator is suspended and off the stack)."""
    frame = sys._current_frames().get(thread.ident)  # type: ignore[arg-type]
    while frame is not None:
        if frame.f_code.co_name == "read" and frame.f_code.co_filename.endswith("_lock.py"):
            return True
        frame = frame.f_back
    return False


def test_readers_share_and_writers_wait_for_them() -> None:
    lock = ReadWriteLock()
    inside = threading.Barrier(3, timeout=10)
    release = threading.Event()
    log: list[str] = []

    def reader() -> None:
        with lock.read():
            inside.wait()  # both readers are in at once
            release.wait(10)
            log.append("reader done")

    def writer() -> None:
        with lock.write():
            log.append("writer")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    inside.wait()
    w = threading.Thread(target=writer)
    w.start()
    wait_for(lambda: lock._writers_waiting == 1, "the writer waits")
    assert log == []  # the writer waits for the readers
    release.set()
    for t in [*readers, w]:
        t.join(10)
    assert log == ["reader done", "reader done", "writer"]


def test_waiting_writer_goes_before_new_readers() -> None:
    lock = ReadWriteLock()
    log: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def long_reader() -> None:
        with lock.read():
            first_in.set()
            release.wait(10)
        log.append("first reader out")

    def writer() -> None:
        with lock.write():
            log.append("writer")

    def late_reader() -> None:
        with lock.read():
            log.append("late reader")

    t1 = threading.Thread(target=long_reader)
    t1.start()
    first_in.wait(10)
    t2 = threading.Thread(target=writer)
    t2.start()
    wait_for(lambda: lock._writers_waiting == 1, "the writer waits")
    t3 = threading.Thread(target=late_reader)
    t3.start()
    # The late reader must be queued behind the writer (or, if it jumped the queue,
    # done: the assertion below then fails) before the first reader lets go.
    wait_for(lambda: inside_read(t3) or "late reader" in log, "the late reader arrives")
    release.set()
    for t in (t1, t2, t3):
        t.join(10)
    assert log.index("writer") < log.index("late reader")


def test_gate_never_mixes_two_settings() -> None:
    current: list[int] = []
    gate = SettingGate(current.append)
    active: dict[int, int] = {}
    overlap = threading.Event()
    guard = threading.Lock()

    def user(value: int) -> None:
        for _ in range(200):
            with gate.use(value):
                with guard:
                    active[value] = active.get(value, 0) + 1
                    if len([v for v, n in active.items() if n]) > 1 or current[-1] != value:
                        overlap.set()
                time.sleep(0)
                with guard:
                    active[value] -= 1

    threads = [threading.Thread(target=user, args=(v,)) for v in (10, 10, 50, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not overlap.is_set()
    assert set(current) == {10, 50, 200}
