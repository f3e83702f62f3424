"""Fake backends serving the real response shapes (shared/REFERENCE.md), for tests and demos."""
