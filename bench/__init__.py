"""`make bench`: measured performance, side by side with same-run baselines (see bench/README.md)."""
