"""What the service tells its operators: Prometheus metrics, structured logs, health endpoints."""
