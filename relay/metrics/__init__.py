"""Plain-int statistics, the Prometheus collector that reads them, and the admin HTTP app."""
