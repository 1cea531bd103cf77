"""The guardq worker: Celery app and task, image fetching and preparation, inference backends, publishing; and
``worker/delivery/``, everything downstream of the verdict stream (its ``__init__`` is the producers' interface)."""
