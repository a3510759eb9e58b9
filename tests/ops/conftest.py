"""Fixtures for the ops endpoints: a dependency that accepts connections and never answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections (the kernel completes the handshake) and never says a
    word: a hung Postgres or Redis, the case where only timeouts keep a probe from hanging."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]
