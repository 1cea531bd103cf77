"""The webhook worker: a Celery app on its own queue (``guardq.webhooks``) that signs and sends deliveries behind
the SSRF guard, so slow endpoints never hold a GPU worker. Run it with ``guardq webhooks worker``.
"""
