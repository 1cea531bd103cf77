"""Webhook delivery, producer side: subscriptions, fan-out of stream events into deliveries, the due-time
schedule that feeds the ``guardq.webhooks`` Celery queue, and replay. The sending itself (signing, SSRF guard,
retries, dead-lettering) is the webhook worker's job (``worker/webhooks/``); see docs/delivery.md.
"""
