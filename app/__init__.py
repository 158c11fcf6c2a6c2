"""ws-ingest: WebSocket feeds in, JSON envelopes out, inside a Bytewax dataflow."""
