"""Backfill results in S3: where each backfill's results go (``targets``), the sink that writes them (``sink``, a
consumer group on the verdict stream: JSON Lines parts; ``shards`` + ``shardledger``: one Parquet per dataset
shard, laid out by ``shardfile``) and the reports over them (``report``, ``shardreport``). See docs/delivery.md.
"""
