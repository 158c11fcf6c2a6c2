"""connect_hook functions the tests name in INGEST_SOURCES (`tests.hooks:...`)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any
from urllib.parse import urlsplit


def broken(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("token service down")


def kucoin_token(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """As a KuCoin client does before every connection: ask the REST API for a connect token
    (`bullet-public`, here on the simulated venue's own host), then connect with it in the URL
    and a fresh connectId. Sync, blocking I/O: the service runs it in a thread."""
    parts = urlsplit(settings["url"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: direct
    with opener.open(f"http://{parts.netloc}/api/v1/bullet-public", timeout=5) as response:
        data = json.loads(response.read())["data"]
    connect_id = f"{name}-{data['token'][:6]}"
    endpoint = data["instanceServers"][0]["endpoint"]
    return {"url": f"{endpoint}?token={data['token']}&connectId={connect_id}",
            "subscribe": [{"id": connect_id, "type": "subscribe",
                           "topic": "/market/ticker:BTC-USDT", "privateChannel": False,
                           "response": True}]}


def leaky(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A hook whose error quotes the API key it was given: the service must mask it."""
    raise PermissionError(f"key {settings['headers']['X-Api-Key']} was refused")
