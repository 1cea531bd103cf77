"""Reading the verdict stream: the reference consumer-group reader (``consumer``) and plain reads (``reader``:
tail, the newest id, wait for given jobs' terminal events)."""
