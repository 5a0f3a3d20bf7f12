"""Bundled example models and data that ship offline (no hub, no downloads)."""
