"""How long a sink outage a feed survives: `python -m bench.outage`.

While the sink is down the worker waits in write_batch, and its feeds' event loops do not run:
no frame is read and no ping is answered. A feed server that pings with an interval P and a
timeout T then drops us. This runs a feed server with P = T = 2 s (real feeds often use
20 s / 20 s: scale accordingly), takes the sink away for a range of durations, and reports
whether the feed connection survived, and how many messages the feed had sent that never
arrived. (This test feed pauses while no connection is open, so that count covers only what was
in flight when a connection dropped; a real feed would also lose what it sent meanwhile.)
"""

from __future__ import annotations

import json
import time

from support.servers import Sink, WsServer, feed_handler
from support.service import Service

PING_S = 2.0
OUTAGES_S = (1.0, 2.5, 4.0, 6.0)


def run(outage: float) -> dict[str, object]:
    sent: list[int] = []
    sink = Sink()
    feed = WsServer(feed_handler(10**6, name="feed", interval=0.005, sent=sent),
                    ping_interval=PING_S, ping_timeout=PING_S, close_timeout=1)
    app = Service({"INGEST_SOURCES": json.dumps([{"name": "feed", "url": feed.url}]),
                   "INGEST_SINK_URL": sink.url, "INGEST_LOG_LEVEL": "warning"})
    try:
        app.wait_ready()
        time.sleep(PING_S * 2)
        sink.server.stop()
        time.sleep(outage)
        sink.server.start()
        time.sleep(PING_S * 3)
        feed.stop()
        time.sleep(1)
        arrived = {m["data"]["n"] for m in sink.messages}
        connects = app.metric("ingest_source_connects_total", source="feed")
        in_flight_lost = len(set(sent) - arrived)
        disconnects = [e for e in app.logs() if e["event"] == "source_disconnected"]
        return {"outage_s": outage, "feed_reconnected": connects > 1,
                "close": disconnects[0].get("code") if disconnects else None,
                "messages_sent_by_feed": len(sent), "in_flight_lost": in_flight_lost}
    finally:
        app.close()
        sink.close()
        feed.close()


if __name__ == "__main__":
    print(f"feed server pings every {PING_S} s with a {PING_S} s timeout; feed at 200 msg/s")
    for outage in OUTAGES_S:
        print(json.dumps(run(outage)), flush=True)
