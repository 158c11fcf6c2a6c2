"""How to retry a connection (pure): backoff delays, and what a failed attempt was.

Source and sink both reconnect with `backoff()`; each starts a fresh generator after a connection
that lived `RESET_AFTER_S`, so a long-lived connection that drops is retried quickly.
`classify_failure()` is to our reconnect loop what websockets' `process_exception()` is to its
own: it names why an attempt failed (the `reason` label of
`ingest_source_connect_failures_total`) and says whether an operator must act (error level).
`parse_retry_after()` reads a refusal's `Retry-After`, which lengthens the next delay.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Literal

from websockets.exceptions import InvalidMessage, InvalidProxyStatus, InvalidStatus, ProxyError

from app.errors import ConnectHookError

RESET_AFTER_S = 30.0
RETRY_AFTER_MAX_S = 3600.0
"""The longest `Retry-After` honoured: a broken header must not park a feed for days."""

FailureReason = Literal["dns", "refused", "timeout", "tls", "rejected", "other"]
ACTION_STATUSES = frozenset({400, 401, 403, 404, 407})
"""HTTP answers to a handshake that no retry will mend: credentials or the URL are wrong."""
UNKNOWN_ISSUER = frozenset({2, 18, 19, 20, 21})
"""OpenSSL verify codes meaning "signed by a CA we do not trust" (X509_V_ERR_...)."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: delays in [0, cap], the cap doubling."""

    min_s: float
    max_s: float
    factor: float = 2.0

    def delays(self, uniform: Callable[[float, float], float] = random.uniform) -> Iterator[float]:
        cap = self.min_s
        while True:
            yield uniform(0.0, cap)
            cap = min(self.max_s, cap * self.factor)


@dataclass(frozen=True)
class Failure:
    """Why a connection attempt failed, in the words of the metric and of the log."""

    reason: FailureReason
    detail: str
    needs_action: bool = False  # log at error level: retrying alone will not fix it


HTTP_ADVICE = {
    400: "the server refused the handshake as malformed: check the URL, subprotocols and headers",
    401: "the server wants credentials: check the headers (e.g. Authorization) of this feed",
    403: "the server refused these credentials or this client: check the headers, the key's "
         "permissions and any IP allow-list",
    404: "nothing serves WebSockets at that path: check the URL's path",
    429: "the server limits how often clients connect: retrying with backoff; if it persists, "
         "raise INGEST_RECONNECT_MIN_MS or run fewer connections",
}


def _in_tls_handshake(exc: BaseException) -> bool:
    """Whether `exc` was raised while asyncio set up a TLS transport (the only step of
    opening a connection that runs `_create_connection_transport` or asyncio's sslproto)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.endswith("sslproto.py") or \
                code.co_name == "_create_connection_transport":
            return True
        tb = tb.tb_next
    return False


def _rejected(exc: InvalidStatus) -> Failure:
    response = exc.response
    try:  # the standard name: servers' own reason phrases vary, or are empty
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = response.reason_phrase
    status = f"HTTP {response.status_code} {phrase}".rstrip()
    advice = HTTP_ADVICE.get(response.status_code)
    if advice is None:
        advice = ("the server is failing; retrying" if response.status_code >= 500
                  else "the URL answers HTTP but does not accept a WebSocket there")
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        advice += f" (the server asks to wait {retry_after} s)"
    return Failure("rejected", f"the server answered the handshake with {status}: {advice}",
                   needs_action=response.status_code in ACTION_STATUSES)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or an HTTP date, RFC 9110
    10.2.3), at most RETRY_AFTER_MAX_S; None when absent or unreadable. `now`: Unix time."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def classify_failure(exc: BaseException) -> Failure:
    """The reason label and a short operator-facing description of a failed attempt: what
    happened, then what to check."""
    if isinstance(exc, InvalidStatus):
        return _rejected(exc)
    if isinstance(exc, InvalidProxyStatus):
        status = exc.response.status_code
        return Failure("rejected", f"the proxy answered CONNECT with HTTP {status}",
                       needs_action=status in ACTION_STATUSES)
    if isinstance(exc, ProxyError):
        return Failure("other", f"the proxy failed ({exc})")
    if isinstance(exc, socket.gaierror):
        return Failure("dns", f"the host name in the URL does not resolve ({exc.strerror}): "
                              "check its spelling, and that this machine's DNS knows it",
                       needs_action=True)
    if isinstance(exc, ConnectionRefusedError):
        return Failure("refused", "connection refused: nothing listens on that host and port: "
                                  "is the server running, is the port right?")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return Failure("timeout", "no answer within the open timeout: is the host reachable "
                                  "(firewall, proxy)?")
    if isinstance(exc, ssl.SSLCertVerificationError):
        unknown_issuer = getattr(exc, "verify_code", None) in UNKNOWN_ISSUER
        hint = ": is its CA the one in ca_file?" if unknown_issuer else ""
        return Failure("tls", "the server's certificate does not verify "
                              f"({getattr(exc, 'verify_message', None) or exc})"
                              f"{hint}",
                       needs_action=True)
    if isinstance(exc, ssl.SSLError):
        why = getattr(exc, "reason", None) or exc
        return Failure("tls", f"the TLS handshake failed ({why}): if the server is a plain "
                              "ws:// server, use ws:// in the URL", needs_action=True)
    if isinstance(exc, (ConnectionError, EOFError)) and _in_tls_handshake(exc):
        return Failure("tls", "the TLS handshake failed: the server closed the connection; if "
                              "it is a plain ws:// server, use ws:// in the URL",
                       needs_action=True)
    if isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError):
        # TLS 1.3 reports a refused client certificate only after the handshake: as this EOF.
        return Failure("other", "the server closed the connection before answering the "
                                "handshake (over wss://, a server refusing our client "
                                "certificate, or a TLS server reached with ws://, does this)")
    if isinstance(exc, ConnectHookError):
        return Failure("other", str(exc))
    return Failure("other", repr(exc))
