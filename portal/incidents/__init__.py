"""Platform incidents: periods of downtime that staff log, that the refund pre-check's
outage rule reads and that the public status page lists."""
