from itertools import islice

from app.backoff import backoff


def test_caps_double_up_to_the_maximum():
    caps = list(islice(backoff(0.1, 1.0, uniform=lambda low, high: high), 6))
    assert caps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_draws_from_zero_to_the_cap():
    delays = list(islice(backoff(0.1, 0.4), 200))
    assert all(0 <= d <= 0.4 for d in delays)
    assert min(delays) < 0.05 and max(delays) > 0.3
