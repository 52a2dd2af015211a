"""Sinks: where events and copied documents go (MongoDB, Redis)."""
