"""TLS for outbound connections: the client `ssl.SSLContext` of a feed's `tls` or of
INGEST_SINK_TLS (custom CA, client certificate, verification).

Pure but for reading the certificate files it is given. Built once per connection owner and
reused for every attempt.
"""

from __future__ import annotations

import ssl

import structlog

from app.errors import ConfigError
from app.settings import Settings, TlsSettings


def client_context(tls: TlsSettings | None) -> ssl.SSLContext | None:
    """The context for wss:// connections; None means websockets' default (the system CAs,
    verification on). Raises `ssl.SSLError` or `OSError` when a file cannot be loaded."""
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if not tls.verify:
        # check_hostname must be off before verify_mode may be CERT_NONE.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def warn_if_unverified(tls: TlsSettings | None, log: structlog.typing.FilteringBoundLogger,
                       **where: str) -> None:
    """`verify: false` is for tests and emergencies: say so loudly, once, at start."""
    if tls is not None and not tls.verify:
        log.warning("tls_verify_disabled", **where,
                    detail="the server's certificate is not checked: anyone on the network "
                           "path can read and alter this connection")


def check_tls(settings: Settings) -> None:
    """Build every context once, at start: files that exist but hold no usable certificate or
    key are a ConfigError naming the variable, not a failure of every attempt later."""
    places = [(f"INGEST_SOURCES[{index}].tls", feed.tls)
              for index, feed in enumerate(settings.feeds)]
    places.append(("INGEST_SINK_TLS", settings.sink_tls))
    problems = []
    for where, tls in places:
        try:
            client_context(tls)
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(f"{where}: cannot load the CA or client certificate ({exc})")
    if problems:
        raise ConfigError(problems)
