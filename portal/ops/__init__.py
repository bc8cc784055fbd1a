"""Running the portal: health checks, request logs, metrics, deployment checks."""
