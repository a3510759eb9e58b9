"""The two kinds of failure on the frame path, and how each is handled.

A failure of the surroundings (database or broker unreachable: is_transient) keeps the same frames to be
tried again (the batcher, Celery retries), as they succeed once the service answers. A failure caused by
the frames themselves (a value a column cannot hold, a session deleted meanwhile) refuses only the frames at
fault (store_isolating_bad_data), to their own sockets (`unstorable`), and the rest of their batch goes on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import kombu.exceptions
import redis
from django.db import InterfaceError, OperationalError, connection, transaction

from research_portal.capture.acks import RejectedFrames

T = TypeVar("T")

# Client-facing code of frames taken by the socket whose values could not be stored: refused for good.
UNSTORABLE = "unstorable"
UNSTORABLE_DETAIL = "The server could not store this frame's values; it is dropped."

# Failures of the surroundings, not of the frames: the same frames succeed once the database or the broker
# answers again, so they are kept and tried again (batcher, Celery retries). Anything else (DataError,
# IntegrityError, a bad value) was caused by the data and is never retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica promoted under us
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT_ERRORS)


def rejected_by_session(
    frames: Iterable[tuple[int, int]], code: str = UNSTORABLE, detail: str = UNSTORABLE_DETAIL
) -> list[RejectedFrames]:
    """Frames, as (session id, seq), refused for good: one entry per session."""
    seqs: dict[int, list[int]] = defaultdict(list)
    for session_id, seq in frames:
        seqs[session_id].append(seq)
    return [RejectedFrames(session_id, tuple(sorted(s)), code, detail) for session_id, s in seqs.items()]


def store_isolating_bad_data(
    items: list[T], store: Callable[[list[T]], int | None]
) -> tuple[int, list[tuple[T, BaseException]]]:
    """`store(items)` in one go; when that fails because of the data (not is_transient), each half is
    stored on its own, down to single items, so only the items that fail alone are left out. Returns what
    `store` returned, summed, and the items left out with their errors. Transient errors propagate.

    The normal case costs one attempt; a bad item among 32 costs about ten."""
    if not items:
        return 0, []
    try:
        with _one_attempt():
            return store(items) or 0, []
    except Exception as error:
        if is_transient(error):
            raise
        if len(items) == 1:
            return 0, [(items[0], error)]
    middle = len(items) // 2
    done_first, failed_first = store_isolating_bad_data(items[:middle], store)
    done_second, failed_second = store_isolating_bad_data(items[middle:], store)
    return done_first + done_second, failed_first + failed_second


@contextmanager
def _one_attempt() -> Iterator[None]:
    """An attempt that may fail on its data: inside a transaction a savepoint, so the failure leaves the
    transaction usable; otherwise (autocommit) the statement is its own transaction already."""
    if connection.in_atomic_block:
        with transaction.atomic():
            yield
    else:
        yield


def describe_error(error: BaseException) -> str:
    """One line for logs: the error's type and first line (no values of the rows)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}"[:200] if lines else type(error).__name__
