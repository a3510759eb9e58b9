"""Waiting for something another thread or process does: one helper, sync and async."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    read: Callable[[], T], until: Callable[[T], object] = bool, timeout_s: float = 30, interval_s: float = 0.2
) -> T:
    """Call `read()` every `interval_s` until `until(value)` holds or `timeout_s` has passed, and return the
    last value read: the test asserts on it, so a timeout fails with what was seen last."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if until(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


async def eventually_async(
    read: Callable[[], Awaitable[T]],
    until: Callable[[T], object] = bool,
    timeout_s: float = 30,
    interval_s: float = 0.2,
) -> T:
    """`eventually` for an event loop: awaits `read()` and sleeps without blocking the loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if until(value) or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval_s)
