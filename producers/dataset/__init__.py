"""Dataset mode: backfill img2dataset-style WebDataset tar shards and Parquet collections, shard by shard, and
write the verdicts back as one Parquet per input shard (docs/datasets.md)."""
