"""The Prometheus collector that reads the counters the layers below own, and the
admin HTTP app."""
