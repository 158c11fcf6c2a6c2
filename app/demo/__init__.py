"""Demo peers for `docker compose up`: a market-data feed and a receiver."""
