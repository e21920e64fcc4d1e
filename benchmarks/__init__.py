"""Load generators and benchmark drivers for relay (not imported by relay itself)."""
