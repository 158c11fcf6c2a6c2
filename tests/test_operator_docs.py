"""Issue 15, documentation: the README's configuration table, "Run it without Docker" and the
PromQL examples' healthy answers, each checked against the service itself.

DOC is the README itself.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.service import ROOT, free_port, http_get
from support.wait import wait_until

DOC = ROOT / "README.md"
VENUES = ["alpha", "beta", "gamma"]


def section(heading: str) -> str:
    """The text of the section under `heading` (up to the next heading of that level or above)."""
    text = DOC.read_text()
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    after = text[start + len(heading) + 1:]
    end = re.search(rf"^#{{1,{len(level)}}} ", after, re.MULTILINE)
    return after[:end.start()] if end else after


def code_lines(text: str) -> list[str]:
    """The lines of indented code blocks, without their indentation."""
    return [line[4:] for line in text.splitlines() if line.startswith("    ")]


def first_code_block(text: str) -> list[str]:
    """The lines of the first indented code block in `text`."""
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("    "):
            found.append(line[4:])
        elif found and line.strip():
            break
    return found


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_the_configuration_table_matches_the_settings():
    from app.configdoc import variables

    documented: list[tuple[str, str]] = []
    for name_cell, default_cell, *_ in table_rows(section("## Configuration")):
        names = re.findall(r"`(INGEST_[A-Z_]+)`", name_cell)
        defaults = [d.strip().strip("`") for d in default_cell.split(" / ")]
        if len(defaults) != len(names):
            defaults = defaults * len(names)
        documented += zip(names, defaults, strict=True)
    expected = [(v.name, {"unset": "—"}.get(v.default, v.default)) for v in variables()]
    assert [name for name, _ in documented] == [name for name, _ in expected]
    for (name, written), (_, default) in zip(documented, expected, strict=True):
        # A default may say more after the value: "— (off)".
        assert written == default or written.startswith(default + " "), (name, written, default)


@dataclass
class LocalDemo:
    """The three terminals of "Run it without Docker", on free ports."""

    feed_port: int
    receiver_port: int
    metrics_port: int
    service: subprocess.Popen[str]

    def counts(self) -> dict[str, Any]:
        status, body = http_get(f"http://127.0.0.1:{self.receiver_port}/counts")
        assert status == 200
        counts: dict[str, Any] = json.loads(body)
        return counts

    def readyz(self) -> tuple[int, bytes]:
        try:
            return http_get(f"http://127.0.0.1:{self.metrics_port}/readyz")
        except OSError:
            return 0, b""


def documented_commands() -> list[list[str]]:
    commands = [shlex.split(line) for line in code_lines(section("## Run it without Docker"))
                if line.startswith("python -m app")]
    assert [c[:3] for c in commands] == [["python", "-m", "app.demo.feed"],
                                         ["python", "-m", "app.demo.receiver"],
                                         ["python", "-m", "app"]]
    return commands


@contextmanager
def local_demo(tmp_path: Path) -> Iterator[LocalDemo]:
    """Run the documented commands as written, but on free ports (8765, 8766 and 9108 may be
    taken on a shared machine): `--port` for the demo peers, and a copy of the env file."""
    feed_cmd, receiver_cmd, service_cmd = documented_commands()
    feed_port, receiver_port, metrics_port = free_port(), free_port(), free_port()
    env_file = ROOT / service_cmd[service_cmd.index("--env-file") + 1]
    text = env_file.read_text()
    for old, new in (("8765", feed_port), ("8766", receiver_port), ("9108", metrics_port)):
        assert f"127.0.0.1:{old}" in text or f"PORT={old}" in text, old
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}").replace(
            f"PORT={old}", f"PORT={new}")
    local = tmp_path / "local.env"
    local.write_text(text)
    service_cmd[service_cmd.index("--env-file") + 1] = str(local)
    python = [sys.executable]
    started = []
    try:
        for command, extra in ((feed_cmd, ["--port", str(feed_port)]),
                               (receiver_cmd, ["--port", str(receiver_port), "--every", "1"]),
                               (service_cmd, [])):
            started.append(subprocess.Popen(
                python + command[1:] + extra, cwd=ROOT, stdout=subprocess.DEVNULL,
                stderr=(tmp_path / f"{len(started)}.err").open("w"), text=True))
        demo = LocalDemo(feed_port, receiver_port, metrics_port, started[-1])
        wait_until(lambda: demo.readyz()[0] == 200, 30,
                   message=lambda: str(demo.readyz()) + (tmp_path / "2.err").read_text())
        yield demo
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_run_it_without_docker_works_as_written(tmp_path):
    with local_demo(tmp_path) as demo:
        assert json.loads(demo.readyz()[1]) == {
            "ready": True, "sources_down": [], "sink_up": True}
        wait_until(lambda: all(demo.counts()["sources"].get(v, {}).get("count", 0) >= 100
                               for v in VENUES), 30, message=lambda: str(demo.counts()))
        counts = demo.counts()["sources"]
        assert sorted(counts) == VENUES
        assert all(counts[v]["gaps"] == 0 and counts[v]["repeats"] == 0 for v in VENUES)
        demo.service.send_signal(signal.SIGINT)  # Ctrl-C in terminal 3
        assert demo.service.wait(15) == 0


@dataclass
class Query:
    promql: str
    healthy: str


def documented_queries() -> list[Query]:
    """Each PromQL example with its `# healthy:` note (every example must have one)."""
    block = section("## Metrics") if "## Metrics" in DOC.read_text() else DOC.read_text()
    lines = first_code_block(block[block.index("PromQL an operator would start with"):])
    queries: list[Query] = []
    notes: list[str] = []
    for line in lines:
        if line.startswith("#"):
            notes.append(line.lstrip("# "))
        elif notes:  # the first line of a query
            healthy = " ".join(notes[[n.startswith("healthy:") for n in notes].index(True):])
            queries.append(Query(line.strip(), healthy))
            notes = []
        else:  # a continuation line
            queries[-1].promql += " " + line.strip()
    return queries


def check_healthy(result: list[dict[str, Any]], healthy: str) -> bool:
    """Whether Prometheus' answer is what the note says a healthy demo answers."""
    if healthy.startswith("healthy: an empty result"):
        return result == []
    values = {r["metric"].get("source"): float(r["value"][1]) for r in result}
    if healthy.startswith("healthy: one series per feed"):
        if sorted(values) != VENUES:
            return False
        return all(v == 0 for v in values.values()) if ", 0 " in healthy else all(
            v > 0 for v in values.values())
    if healthy.startswith("healthy: one series"):
        return len(result) == 1 and float(result[0]["value"][1]) > 0
    raise AssertionError(f"a healthy answer this test cannot check: {healthy}")


def query(base: str, promql: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{base}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def test_every_promql_example_says_what_a_healthy_demo_answers(
        tmp_path, prometheus: Callable[[list[str]], str]):
    queries = documented_queries()
    assert len(queries) == 6
    assert all(q.healthy.startswith("healthy: ") for q in queries)
    down = next(q for q in queries if q.promql == "ingest_source_up == 0")
    assert "an empty result" in down.healthy
    with local_demo(tmp_path) as demo:
        base = prometheus([f"127.0.0.1:{demo.metrics_port}"])
        up = "ingest_source_up == 1"
        wait_until(lambda: len(query(base, up)) == len(VENUES), 30)
        for example in queries:
            wait_until(lambda q=example: check_healthy(query(base, q.promql), q.healthy), 30,
                       message=lambda q=example: f"{q}: {query(base, q.promql)}")
