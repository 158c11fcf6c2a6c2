"""retry.py: backoff delays and failure classification, without I/O."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from app.retry import Backoff, classify_failure


def test_backoff_caps_double_up_to_the_maximum_with_full_jitter():
    caps = []
    delays = Backoff(0.1, 1.0).delays(uniform=lambda low, high: caps.append((low, high)) or high)
    assert [round(next(delays), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(low == 0.0 for low, _ in caps)


def test_backoff_delays_stay_within_the_cap():
    delays = Backoff(0.05, 0.2).delays()
    assert all(0.0 <= next(delays) <= 0.2 for _ in range(200))


def _status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "reason", Headers()))


@pytest.mark.parametrize(("exc", "reason", "needs_action"), [
    (_status(401), "rejected", True),
    (_status(403), "rejected", True),
    (_status(429), "rejected", False),
    (_status(503), "rejected", False),
    (socket.gaierror(-2, "Name or service not known"), "dns", True),
    (ConnectionRefusedError(111, "refused"), "refused", False),
    (TimeoutError(), "timeout", False),
    (asyncio.TimeoutError(), "timeout", False),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls", True),
    (ssl.SSLError(1, "wrong version number"), "tls", True),
    (OSError("weird"), "other", False),
])
def test_every_failure_has_a_reason(exc, reason, needs_action):
    failure = classify_failure(exc)
    assert (failure.reason, failure.needs_action) == (reason, needs_action)
    assert failure.detail


def test_a_rejected_handshake_names_the_status():
    assert "HTTP 403" in classify_failure(_status(403)).detail
