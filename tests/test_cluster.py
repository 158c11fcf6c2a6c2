"""Issue 6's acceptance: two processes x two workers as one Bytewax cluster on 127.0.0.1."""

from __future__ import annotations

import json

from support.servers import feed_handler
from support.service import free_port, free_ports


def test_two_processes_share_six_feeds_in_order(sink, servers, service):
    n = 1500
    feed_codes: list[int | None] = []

    def recording(name: str):
        handler = feed_handler(n, name=name, interval=0.0005)

        async def handle(ws):
            await handler(ws)
            feed_codes.append(ws.close_code)

        return handle

    names = [f"c{i}" for i in range(6)]
    feeds = [servers(recording(name)) for name in names]
    sources = [{"name": name, "url": feed.url} for name, feed in zip(names, feeds, strict=True)]
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    base_port = free_ports(2)  # process i serves on INGEST_METRICS_PORT + i
    env = {"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url,
           "INGEST_METRICS_PORT": str(base_port), "BYTEWAX_ADDRESSES": addresses,
           "INGEST_WORKERS": "2"}
    processes = [service({**env, "BYTEWAX_PROCESS_ID": str(i)}) for i in range(2)]
    assert [p.port for p in processes] == [base_port, base_port + 1]

    assert sink.wait_for(lambda s: len(s.messages) >= 6 * n, 60), len(sink.messages)
    by_source = sink.by_source()
    assert sorted(by_source) == names
    for name in names:
        assert by_source[name] == list(range(1, n + 1)), name

    # Each feed is read by exactly one worker of the cluster.
    up = [{name: p.metric("ingest_source_up", source=name) for name in names} for p in processes]
    for name in names:
        assert sorted(u.get(name) or 0 for u in up) == [0, 1], (name, up)
    for process in processes:
        assert process.get("/healthz")[0] == 200 and process.get("/readyz")[0] == 200
    assert sink.connections == 4  # one sink connection per worker, 2 x 2

    for process in processes:  # the whole cluster at once, as compose or Kubernetes stops it
        process.stop()
    assert [p.terminate() for p in processes] == [0, 0]
    assert sink.wait_for(lambda s: len(s.close_codes) == 4, 5)
    assert sink.close_codes == [1000] * 4
    assert feed_codes == [1000] * 6


def test_when_one_process_dies_the_cluster_stops(sink, servers, service):
    feeds = [servers(feed_handler(10**6, name=f"d{i}", interval=0.001)) for i in range(4)]
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    env = {"INGEST_SOURCE_URLS": ",".join(f.url for f in feeds), "INGEST_SINK_URL": sink.url,
           "INGEST_METRICS_PORT": str(free_ports(2)), "BYTEWAX_ADDRESSES": addresses}
    processes = [service({**env, "BYTEWAX_PROCESS_ID": str(i)}) for i in range(2)]
    for process in processes:
        process.wait_ready()
    processes[1].process.kill()
    assert processes[0].process.wait(15) == 1  # for compose or Kubernetes to restart
    failed = [e for e in processes[0].logs() if e["event"] == "failed"]
    assert failed and "panic" in failed[0]["error"]
    # On stderr: the error as a JSON log line (its traceback inside), nothing raw.
    assert all(line.startswith("{") for line in processes[0].stderr().splitlines())


def test_forty_feeds_spread_evenly_over_two_processes_of_two_workers(sink, servers, service):
    n = 50
    feeds = [servers(feed_handler(n, name=f"e{i}", interval=0.002)) for i in range(40)]
    sources = [{"name": f"e{i}", "url": feed.url} for i, feed in enumerate(feeds)]
    env = {"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url,
           "INGEST_METRICS_PORT": str(free_ports(2)), "INGEST_WORKERS": "2",
           "BYTEWAX_ADDRESSES": f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"}
    processes = [service({**env, "BYTEWAX_PROCESS_ID": str(i)}) for i in range(2)]
    assert sink.wait_for(lambda s: len(s.messages) >= 40 * n, 60), len(sink.messages)
    by_source = sink.by_source()
    assert all(by_source[f"e{i}"] == list(range(1, n + 1)) for i in range(40))  # order kept
    read_by: dict[str, set[str]] = {}  # partition (one per worker) -> feeds
    for process in processes:
        partitions = set()
        for event in process.logs():
            if event["event"] == "source_connected":
                read_by.setdefault(event["partition"], set()).add(event["source"])
                partitions.add(event["partition"])
        assert len(partitions) == 2  # each of its two workers reads one partition
    assert sorted(read_by) == ["feeds-0", "feeds-1", "feeds-2", "feeds-3"]
    assert [len(feeds) for feeds in read_by.values()] == [10] * 4
    assert set().union(*read_by.values()) == {f"e{i}" for i in range(40)}
    for process in processes:
        process.stop()
    assert [p.terminate() for p in processes] == [0, 0]
