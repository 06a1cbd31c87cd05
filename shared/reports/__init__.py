"""Reports over the request log: statistics, savings, cost reports and latency summaries."""
