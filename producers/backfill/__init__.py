"""Bulk backfill of an S3 prefix or an S3 Inventory report into the bulk queue (``guardq backfill``).

``sources`` lists keys and filters them, ``manifest`` reads inventory reports, ``throttle`` is the backpressure
gate, ``checkpoint`` the durable record and run lease, ``runner`` the enqueue loop, ``session`` the start/stop
bookkeeping, ``tally`` counts completed/failed verdicts per backfill, ``progress`` shows it, ``status`` reports it.
"""
