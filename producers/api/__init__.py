"""The HTTP API (``guardq api``): moderation requests, uploads, job status, S3 event intake, stored policies,
webhook subscriptions and replay, request metrics; FastAPI + uvicorn.

``app`` builds the application, ``services`` holds its per-process clients and request dependencies, ``auth``
API keys, ``ratelimit`` and ``idempotency`` the request guards, ``moderations``/``uploads``/``intake``/
``policies``/``webhooks``/``health`` the routes, ``metrics`` the Prometheus middleware and ``/metrics``,
``s3events`` and ``sns`` the notification formats.
"""
