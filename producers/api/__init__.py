"""The HTTP API (``guardq api``): moderation requests, uploads, job status, S3 event intake; FastAPI + uvicorn.

``app`` builds the application, ``services`` holds its per-process clients and request dependencies, ``auth``
API keys, ``ratelimit`` and ``idempotency`` the request guards, ``moderations``/``uploads``/``intake``/``health``
the routes, ``s3events`` and ``sns`` the notification formats.
"""
