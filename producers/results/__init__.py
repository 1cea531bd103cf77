"""Backfill results in S3 as JSON Lines: where each backfill's results go, the sink that writes them (a consumer
group on the verdict stream) and the report over them. See docs/delivery.md.
"""
