"""Everything that creates moderation jobs: CLI, S3 backfill, HTTP API. Sends tasks by name; never imports worker/."""
