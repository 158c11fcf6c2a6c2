import json
import subprocess
import sys

import structlog

from app.logs import RateLimiter


def test_rate_limiter_allows_one_event_per_interval_and_counts_the_rest():
    now = [0.0]
    limiter = RateLimiter(interval=10, clock=lambda: now[0])
    assert limiter.allow("k") == 0
    assert limiter.allow("k") is None
    assert limiter.allow("other") == 0
    now[0] = 9.9
    assert limiter.allow("k") is None
    now[0] = 10.0
    assert limiter.allow("k") == 2


def test_events_carry_their_context():
    with structlog.testing.capture_logs() as logs:
        structlog.get_logger().bind(source="s", url="ws://x").info("source_connected")
    assert logs == [{"source": "s", "url": "ws://x", "event": "source_connected",
                     "log_level": "info"}]


def test_json_logs_put_errors_on_stderr_and_the_rest_on_stdout():
    code = (
        "import logging, structlog\n"
        "from app.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "log = structlog.get_logger('t')\n"
        "log.info('hello', source='s')\n"
        "log.error('broken', source='s')\n"
        "logging.getLogger('websockets.client').warning('from the library')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    out = [json.loads(line) for line in result.stdout.splitlines()]
    err = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(e["event"], e["level"]) for e in out] == [
        ("hello", "info"), ("from the library", "warning")]
    assert [(e["event"], e["level"], e["source"]) for e in err] == [("broken", "error", "s")]
