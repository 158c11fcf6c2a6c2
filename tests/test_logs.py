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
