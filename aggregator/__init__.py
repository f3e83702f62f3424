"""The aggregator: one process that turns probe events into statistics and snapshots."""
