import pytest

from app.errors import ConfigError
from app.settings import Settings, derive_name, load_settings, mask_url

SINK = "ws://127.0.0.1:9000/out"


def settings(**values):
    return load_settings(_env_file=None, **values)


def test_defaults_follow_the_contract():
    s = settings(sink_url=SINK, source_urls="ws://a.example/x")
    assert (s.sink_framing, s.sink_confirm, s.batch_size, s.batch_timeout_ms) == (
        "message", "ping", 1000, 10)
    assert (s.payload, s.on_invalid, s.reconnect_min_ms, s.reconnect_max_ms) == (
        "json", "drop", 100, 30000)
    assert (s.batch_linger_ms, s.shutdown_timeout_ms) == (0, 5000)
    assert (s.metrics_host, s.metrics_port, s.log_level, s.log_format, s.workers) == (
        "0.0.0.0", 9108, "info", "auto", 1)
    feed = s.feeds[0]
    assert (feed.ping_interval, feed.ping_timeout, feed.idle_timeout, feed.max_message_bytes) == (
        20, 20, 0, 1048576)


def test_feeds_come_from_both_variables_in_order(monkeypatch):
    monkeypatch.setenv("INGEST_SINK_URL", SINK)
    monkeypatch.setenv("INGEST_SOURCES", '[{"name": "coinbase", "url": "wss://ws.example.com/feed",'
                       ' "headers": {"Authorization": "Bearer s3cret"}, "subscribe": '
                       '[{"type": "subscribe"}, "PING"], "idle_timeout": 5}]')
    monkeypatch.setenv("INGEST_SOURCE_URLS", "ws://h1:81/a/, ws://h2/b")
    s = Settings(_env_file=None)
    assert [f.name for f in s.feeds] == ["coinbase", "h1:81/a", "h2/b"]
    assert s.feeds[0].subscribe_messages() == ['{"type":"subscribe"}', "PING"]
    assert s.feeds[0].headers["Authorization"].get_secret_value() == "Bearer s3cret"
    assert s.feeds[0].idle_timeout == 5


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("INGEST_SINK_URL", raising=False)
    env = tmp_path / ".env"
    env.write_text(f"INGEST_SINK_URL={SINK}\nINGEST_SOURCE_URLS=ws://a/b\nINGEST_BATCH_SIZE=7\n")
    s = Settings(_env_file=env)
    assert (s.sink_url, s.batch_size) == (SINK, 7)


def test_derived_names():
    assert derive_name("wss://stream.example.com/ws/btc/") == "stream.example.com/ws/btc"
    assert derive_name("ws://127.0.0.1:8765") == "127.0.0.1:8765"


def problems(**values):
    with pytest.raises(ConfigError) as caught:
        settings(**values)
    return caught.value.problems


def test_missing_and_malformed_sink_url():
    assert problems(source_urls="ws://a") == ["INGEST_SINK_URL: required"]
    assert problems(sink_url="http://x", source_urls="ws://a") == [
        "INGEST_SINK_URL: must start with ws:// or wss://"]


def test_every_field_problem_is_reported_at_once():
    lines = problems(sink_url="http://x", source_urls="ftp://a", batch_size="0")
    assert lines == [
        "INGEST_SOURCE_URLS[0].url: must start with ws:// or wss://",
        "INGEST_SINK_URL: must start with ws:// or wss://",
        "INGEST_BATCH_SIZE: must be at least 1, got 0",
    ]


def test_no_feed_is_a_problem():
    assert problems(sink_url=SINK) == [
        "INGEST_SOURCES or INGEST_SOURCE_URLS: at least one feed is required"]


def test_malformed_sources_json_names_the_variable():
    (line,) = problems(sink_url=SINK, sources="[{not json")
    assert line.startswith("INGEST_SOURCES: not valid JSON")


def test_bad_feed_fields_are_located():
    lines = problems(sink_url=SINK, sources='[{"url": "http://x"}, {"url": "ws://y", "bogus": 1}]')
    assert "INGEST_SOURCES[0].url: must start with ws:// or wss://" in lines
    assert "INGEST_SOURCES[1]: unknown key 'bogus'" in lines


def test_duplicate_names_are_refused():
    lines = problems(sink_url=SINK, source_urls="ws://a/x,ws://a/x")
    assert lines == ["INGEST_SOURCES: duplicate feed name 'a/x'"]


def test_transform_must_name_a_function():
    assert problems(sink_url=SINK, source_urls="ws://a", transform="nofunction") == [
        "INGEST_TRANSFORM: must be package.module:function"]


def test_dead_letter_needs_its_url():
    assert problems(sink_url=SINK, source_urls="ws://a", on_invalid="dead-letter") == [
        "INGEST_DEAD_LETTER_URL: required when INGEST_ON_INVALID=dead-letter"]


def test_enumerations_are_checked_and_case_insensitive():
    assert settings(sink_url=SINK, source_urls="ws://a", log_level="DEBUG").log_level == "debug"
    (line,) = problems(sink_url=SINK, source_urls="ws://a", sink_framing="lines")
    assert line.startswith("INGEST_SINK_FRAMING:")


def test_masked_configuration_hides_secrets():
    s = settings(sink_url="wss://user:pw@sink.example/x", sink_headers='{"X-Key": "k3y"}',
                 sources='[{"url": "ws://a", "headers": {"Authorization": "tok"}}]')
    text = str(s.masked())
    assert "k3y" not in text and "tok" not in text and "pw@" not in text
    assert s.masked()["sink_url"] == "wss://user:***@sink.example/x"


def test_mask_url_leaves_plain_urls_alone():
    assert mask_url("ws://a:1/x?y=1") == "ws://a:1/x?y=1"
