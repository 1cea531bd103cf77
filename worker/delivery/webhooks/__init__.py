"""Signed webhooks (Standard Webhooks), end to end: subscriptions (``registry``), fan-out of stream events into
deliveries by a consumer group (``dispatcher``), the deliveries and their due-time schedule (``deliveries``), the
loop that feeds due ones to the ``guardq.webhooks`` Celery queue (``scheduler``, run with the dispatcher by
``loops``), the webhook worker that signs and sends them behind the SSRF guard (``app``, ``tasks``, ``deliverer``,
``sender``; ``python -m worker.delivery.webhooks``), and replay. See docs/delivery.md.
"""
