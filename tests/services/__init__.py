"""Real services started by tests: Redis, SeaweedFS (S3), guardq workers. Loopback only, own ports and dirs."""
