"""Intake: everything that creates moderation jobs (CLI, S3 backfill, HTTP API, the broker message). Sends tasks by
name; from ``worker/`` it imports only ``worker.delivery``'s public names (docs/architecture.md)."""
