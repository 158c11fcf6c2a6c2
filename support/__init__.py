"""Real peers and helpers shared by the tests and the benchmarks: WebSocket feeds and sinks on
127.0.0.1, `python -m app` as a subprocess, and waiting on a condition with a deadline."""
