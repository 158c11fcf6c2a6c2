"""The sink side: one outbound connection per worker, and the frames written to it."""
