"""The ast race of CPython 3.11: parsing from many threads must never raise SystemError."""

from __future__ import annotations

import threading
import time

import pytest

from browser_control.env_service.actions import parse_action
from browser_control.env_service.browser import browsergym_code


class _GilReleasingGarbage:
    """Cyclic garbage whose finalizer releases the GIL: the collector may run it in the middle of a parse."""

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        time.sleep(0.0001)


def _at_depth(depth: int, fn):  # type: ignore[no-untyped-def]
    # Threads parse at different call depths, as the event loop and the browser workers do; that is what
    # makes an interleaved parse see another thread's counter.
    return fn() if depth == 0 else _at_depth(depth - 1, fn)


@pytest.mark.timeout(900)
def test_sixteen_threads_parse_actions_without_system_error() -> None:
    import gc

    errors: list[str] = []
    threshold = gc.get_threshold()
    gc.set_threshold(10, 1, 1)
    options = "[" + ", ".join(f"'option {n}'" for n in range(20)) + "]"

    def work(k: int) -> None:
        # Without the lock every SystemError of 24 runs came in a thread's first 15 parses (once the threads
        # drift apart they stop colliding); parses beyond 20 only cost time.
        for i in range(20):
            _GilReleasingGarbage()
            try:
                _at_depth(3 * k, lambda i=i: browsergym_code(parse_action(f"select_option('{i % 50}', {options})")))
            except SystemError as exc:
                errors.append(repr(exc))

    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        gc.set_threshold(*threshold)
    assert errors == []
