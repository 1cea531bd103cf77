"""The guardq worker: Celery app and task, image fetching and preparation, inference backends, publishing."""
