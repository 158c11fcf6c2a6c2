"""Issue 15, configuration: `python -m app` as a new user meets it (typos, nothing set, wrong
shapes, --help, config/example.env's recipes, supported Python versions)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import FeedSettings, Settings
from support.service import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself needs tomli below 3.11
    import tomli as tomllib

FEED = "ws://127.0.0.1:9/feed"
SINK = "ws://127.0.0.1:9/out"
EXAMPLE = ROOT / "config" / "example.env"


def run(env: dict[str, str], *args: str, cwd: Path = ROOT,
        shell: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m app ...` (or a shell command line) with only `env` as configuration."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "BYTEWAX_"))}
    clean["PYTHONPATH"] = str(ROOT)
    command = (["bash", "-c", shell] if shell is not None
               else [sys.executable, "-m", "app", *args])
    return subprocess.run(command, env={**clean, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def errors(env: dict[str, str], *args: str) -> list[str]:
    result = run(env, *args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.stderr.splitlines()


def test_an_unknown_variable_is_an_error_naming_the_closest_known_one():
    lines = errors({"INGEST_SOURCE_URLS": FEED, "INGEST_SINK_URL": SINK,
                    "INGEST_PAYLOD": "text"}, "--check-config")
    assert lines == ["INGEST_PAYLOD: unknown variable (did you mean INGEST_PAYLOAD?)"]
    lines = errors({"INGEST_SOURCE_URLS": FEED, "INGEST_SINK_URLS": SINK})
    assert lines == ["INGEST_SINK_URLS: unknown variable (did you mean INGEST_SINK_URL?)",
                     "INGEST_SINK_URL: required"]
    lines = errors({"INGEST_SOURCE_URLS": FEED, "INGEST_SINK_URL": SINK, "INGEST_ZZZ": "1"})
    assert lines == ["INGEST_ZZZ: unknown variable (python -m app --help lists every variable)"]


def test_an_unknown_variable_in_the_env_file_is_an_error_too(tmp_path):
    (tmp_path / ".env").write_text(f"INGEST_SOURCE_URLS={FEED}\nINGEST_SINK_URL={SINK}\n"
                                   "INGEST_BATCH_SIZ=5\n")
    result = run({"PYTHONPATH": str(ROOT)}, cwd=tmp_path, shell=f"{sys.executable} -m app")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "INGEST_BATCH_SIZ: unknown variable (in .env) (did you mean INGEST_BATCH_SIZE?)"]


def test_with_nothing_set_every_problem_is_reported_in_one_pass():
    assert errors({}) == ["INGEST_SINK_URL: required",
                          "INGEST_SOURCES or INGEST_SOURCE_URLS: at least one feed is required"]
    lines = errors({"INGEST_WORKERS": "0", "INGEST_ON_INVALID": "dead-letter",
                    "INGEST_RECONNECT_MIN_MS": "500", "INGEST_RECONNECT_MAX_MS": "100"})
    assert lines == [
        "INGEST_SINK_URL: required",
        "INGEST_WORKERS: must be at least 1, got 0",
        "INGEST_SOURCES or INGEST_SOURCE_URLS: at least one feed is required",
        "INGEST_DEAD_LETTER_URL: required when INGEST_ON_INVALID=dead-letter",
        "INGEST_RECONNECT_MIN_MS: must not exceed INGEST_RECONNECT_MAX_MS",
    ]


def test_a_consistency_check_about_a_variable_in_error_is_not_repeated():
    lines = errors({"INGEST_SOURCES": "[{oops", "INGEST_SINK_URL": SINK})
    assert len(lines) == 1 and lines[0].startswith("INGEST_SOURCES: not valid JSON")


@pytest.mark.parametrize(("sources", "expected"), [
    ({"url": FEED}, ["INGEST_SOURCES: expected a JSON list of feeds, got one object: "
                     "wrap it in [...]"]),
    ([{"uri": FEED}], ["INGEST_SOURCES[0].url: required",
                       "INGEST_SOURCES[0]: unknown key 'uri' (did you mean 'url'?)"]),
    ([{"url": FEED, "subscribe": {"op": "sub"}}],
     ["INGEST_SOURCES[0].subscribe: expected a JSON list, got one object: wrap it in [...]"]),
    ([{"url": FEED, "ping_interval": 0, "max_message_bytes": "big"}],
     ["INGEST_SOURCES[0].ping_interval: must be greater than 0, got 0",
      "INGEST_SOURCES[0].max_message_bytes: expected a whole number, got 'big'"]),
    ([FEED], [f"INGEST_SOURCES[0]: expected a JSON object ({{...}}), got '{FEED}'"]),
])
def test_shapes_are_explained_in_the_operators_terms(sources, expected):
    lines = errors({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": SINK})
    assert lines == expected
    assert not any("Input should" in line or "Extra inputs" in line for line in lines)


def test_enumerations_name_their_choices():
    assert errors({"INGEST_SOURCE_URLS": FEED, "INGEST_SINK_URL": SINK,
                   "INGEST_PAYLOAD": "xml"}) == ["INGEST_PAYLOAD: must be 'json' or 'text', "
                                                 "got 'xml'"]


def test_known_feed_keys_come_from_the_model():
    """'did you mean' offers the keys FeedSettings has, so keys added to it are known at once."""
    from app.problems import annotation_at, keys_of

    assert keys_of(annotation_at(Settings, ("sources", 0))) == list(FeedSettings.model_fields)
    lines = errors({"INGEST_SOURCES": json.dumps([{"url": FEED, "subscrib": ["x"]}]),
                    "INGEST_SINK_URL": SINK})
    assert lines == ["INGEST_SOURCES[0]: unknown key 'subscrib' (did you mean 'subscribe'?)"]


def test_help_lists_every_variable_with_its_default_and_points_to_the_example():
    result = run({}, "--help")
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    assert "config/example.env" in text and "--env-file" in text
    for name, field in Settings.model_fields.items():
        variable = "INGEST_" + name.upper()
        shown = [line.strip() for line in text.splitlines()
                 if re.match(rf"\s+{variable}(=| \()", line)]
        assert len(shown) == 1, variable
        default = field.get_default(call_default_factory=True)
        if field.is_required():
            assert shown[0] == f"{variable} (required)"
        elif default in (None, []):
            assert shown[0] == f"{variable} (unset)"
        else:
            written = default if isinstance(default, str) else json.dumps(default)
            assert shown[0] == f"{variable}={written}"
        assert field.description, f"{variable} has no one-line meaning (a docstring)"
        assert field.description in text
    for variable in ("BYTEWAX_ADDRESSES", "BYTEWAX_PROCESS_ID", "BYTEWAX_WORKERS_PER_PROCESS"):
        assert variable in text


def _env_file_assignments(path: Path) -> dict[str, str]:
    """The file as `docker run --env-file` reads it: NAME=value lines, the value verbatim."""
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            found[name] = value
    return found


def test_example_env_lists_every_variable_with_its_default():
    from app.configdoc import variables

    text = EXAMPLE.read_text()
    set_here = _env_file_assignments(EXAMPLE)
    commented = set(re.findall(r"^# ?(INGEST_[A-Z_]+)=", text, re.MULTILINE))
    for variable in variables():
        assert variable.name in set_here or variable.name in commented, variable.name
        if variable.name in set_here and variable.default not in ("required", "unset"):
            assert set_here[variable.name] == variable.default, variable.name
    known = {variable.name for variable in variables()}
    assert set(set_here) | commented <= known
    assert "xargs" not in text and "compose run --env-file" not in text


def _check_config_output(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    assert shown["sink_url"] == "wss://collector.example.com/ingest"
    feeds = shown["feeds"]
    assert isinstance(feeds, list) and feeds[0]["subscribe"][0]["product_ids"] == ["BTC-USD"]
    return shown


def test_example_env_recipe_env_file_flag():
    _check_config_output(run({}, "--env-file", str(EXAMPLE), "--check-config"))


def test_example_env_recipe_dot_env_in_the_working_directory(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / ".env")
    _check_config_output(run({}, cwd=tmp_path, shell=f"{sys.executable} -m app --check-config"))


def test_example_env_recipe_docker_env_file_semantics():
    """`docker run --env-file` passes each value verbatim: those values must be valid."""
    _check_config_output(run(_env_file_assignments(EXAMPLE), "--check-config"))


def test_example_env_recipe_shell_export_loop():
    recipe = next(line.strip("# ").strip() for line in EXAMPLE.read_text().splitlines()
                  if "while IFS= read -r line" in line)
    recipe = recipe.replace("my.env", str(EXAMPLE))
    _check_config_output(run({}, shell=f"{recipe}\n{sys.executable} -m app --check-config"))


def test_a_missing_env_file_is_a_configuration_error():
    assert errors({}, "--env-file", "/nonexistent/my.env") == [
        "--env-file: no such file: /nonexistent/my.env"]


def test_supported_python_versions_are_plain_in_the_package_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10,<3.13"
    versions = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert versions == ["3.10", "3.11", "3.12"]


def test_bytewax_variables_are_checked_in_the_same_pass():
    assert errors({"BYTEWAX_PROCESS_ID": "one", "BYTEWAX_ADDRESSES": "h:1;h:2"}) == [
        "INGEST_SINK_URL: required",
        "INGEST_SOURCES or INGEST_SOURCE_URLS: at least one feed is required",
        "BYTEWAX_PROCESS_ID: not a whole number: 'one'"]
    assert errors({"INGEST_SOURCE_URLS": FEED, "INGEST_SINK_URL": SINK,
                   "BYTEWAX_PROCESS_ID": "2", "BYTEWAX_ADDRESSES": "h:1;h:2"}) == [
        "BYTEWAX_PROCESS_ID: 2 is past the end of BYTEWAX_ADDRESSES (2 addresses; the first "
        "is 0)"]
