"""What operators see: structured logs, Prometheus metrics, scrape-time gauges and job events."""
