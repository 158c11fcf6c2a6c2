"""URLs at start (RFC 6455: no fragment; a port that is a port) and URL passwords in logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from http import HTTPStatus

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from app.logs import mask_passwords
from support.service import ROOT
from support.wait import wait_until

SECRET = "PASSWORD-555"
SINK = "ws://127.0.0.1:9/out"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "BYTEWAX_"))}
    return subprocess.run([sys.executable, "-m", "app", *args], env={**clean, **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


BAD = f"ws://carol:{SECRET}@127.0.0.1"


@pytest.mark.parametrize("check", [False, True])
@pytest.mark.parametrize(("env", "expected"), [
    ({"INGEST_SOURCE_URLS": f"{BAD}/feed#part", "INGEST_SINK_URL": SINK},
     ("INGEST_SOURCE_URLS", "must not have a #fragment (RFC 6455)")),
    ({"INGEST_SOURCES": json.dumps([{"url": f"{BAD}:abc/feed"}]), "INGEST_SINK_URL": SINK},
     ("INGEST_SOURCES", "has a bad port (a number from 1 to 65535)")),
    ({"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": f"{BAD}:abc/"},
     ("INGEST_SINK_URL", "has a bad port (a number from 1 to 65535)")),
    ({"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": f"{BAD}:99999/"},
     ("INGEST_SINK_URL", "has a bad port (a number from 1 to 65535)")),
    ({"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": f"{BAD}/#"},
     ("INGEST_SINK_URL", "must not have a #fragment (RFC 6455)")),
    ({"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": SINK, "INGEST_ON_INVALID": "dead-letter",
      "INGEST_DEAD_LETTER_URL": f"{BAD}:0/dead"},
     ("INGEST_DEAD_LETTER_URL", "has a bad port (a number from 1 to 65535)")),
    ({"INGEST_SOURCES": json.dumps([{"url": "ws://a", "proxy": f"http://u:{SECRET}@p:x"}]),
      "INGEST_SINK_URL": SINK},
     ("INGEST_SOURCES", "has a bad port (a number from 1 to 65535)")),
])
def test_a_bad_url_is_one_line_and_exit_2(env, expected, check):
    result = run(env, *(["--check-config"] if check else []))
    assert result.returncode == 2, result.stderr
    variable, problem = expected  # the exact wording of the variable's path is not ours
    [line] = result.stderr.splitlines()
    assert line.startswith(variable) and line.endswith(": " + problem), line
    assert SECRET not in result.stdout + result.stderr


def test_check_config_masks_every_url_password():
    result = run({"INGEST_SOURCES": json.dumps([{"url": f"{BAD}:81/a",
                                                 "proxy": f"http://u:{SECRET}@[::1]:3128"}]),
                  "INGEST_SINK_URL": f"{BAD}:82/", "INGEST_ON_INVALID": "dead-letter",
                  "INGEST_DEAD_LETTER_URL": f"{BAD}:83/"}, "--check-config")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    config = json.loads(result.stdout)
    assert config["feeds"][0]["proxy"] == "http://u:***@[::1]:3128"
    assert config["sink_url"] == "ws://carol:***@127.0.0.1:82/"


@pytest.mark.parametrize(("text", "masked"), [
    (f"InvalidURI('{BAD}:1/#x', 'fragment')", "InvalidURI('ws://carol:***@127.0.0.1:1/#x', "
                                              "'fragment')"),
    (f'"url": "wss://u:{SECRET}@x@h:1/a", "b": "c@d"', '"url": "wss://u:***@h:1/a", "b": "c@d"'),
    ("ws://user@h/ mail x@y", "ws://user@h/ mail x@y"),
    (f"http://a:{SECRET}@h and https://c:d@[::1]:3", "http://a:***@h and https://c:***@[::1]:3"),
])
def test_mask_passwords(text, masked):
    assert mask_passwords(text) == masked


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_password_reaches_a_log_line_whatever_carries_it(fmt):
    code = (
        "import logging, structlog\n"
        "from app.logs import configure_logging\n"
        f"configure_logging('info', {fmt!r})\n"
        "log = structlog.get_logger('t')\n"
        f"url = {BAD + ':1/x'!r}\n"
        "log.warning('field', url=url, nested={'urls': [url]})\n"
        "try:\n"
        "    raise ValueError(f'cannot open {url}')\n"
        "except ValueError as exc:\n"
        "    log.error('failed', error=repr(exc), exc_info=True)\n"
        "    logging.getLogger('websockets.client').error('library: %s', url, exc_info=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("carol:***@") >= 5  # each line is there, masked
    assert SECRET not in output


def redirect_with_fragment(connection: ServerConnection, request: Request) -> Response:
    """Answers every handshake with a redirect that websockets resolves against the URL it
    connected to (credentials included) and then refuses: the URL is in the exception's text."""
    response = connection.respond(HTTPStatus.FOUND, "moved\n")
    response.headers["Location"] = "/elsewhere#part"
    return response


def test_a_url_password_is_in_no_log_line_of_a_connection_that_keeps_failing(servers, service):
    server = servers(lambda ws: ws.wait_closed(), process_request=redirect_with_fragment)
    url = server.url.replace("ws://", f"ws://carol:{SECRET}@")
    app = service({"INGEST_SOURCE_URLS": url + "/feed", "INGEST_SINK_URL": url + "/sink",
                   "INGEST_RECONNECT_MIN_MS": "10", "INGEST_RECONNECT_MAX_MS": "20"})

    def failures() -> set[str]:
        return {e["event"] for e in app.logs() if e["event"].endswith("_connect_failed")}

    wait_until(lambda: failures() == {"source_connect_failed", "sink_connect_failed"}, 20)
    lines = app.stdout() + app.stderr()
    assert "fragment identifier is meaningless" in lines  # the exception's text is logged...
    assert "carol:***@" in lines  # ...with the URL masked
    assert SECRET not in lines
