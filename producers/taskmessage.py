"""The exact Redis list entry Celery's ``send_task`` would push for a ``guardq.moderate`` job, built here so that
many of them go into one Redis transaction together with the jobs' records.

Celery builds the message itself (protocol 2 headers, properties and body, via ``app.amqp.as_task_v2``); this module
only wraps it the way kombu's Producer and Redis transport do before their ``LPUSH`` (JSON body, base64-encoded;
``delivery_info`` with the default exchange and the queue as routing key, which is also where kombu puts a message
back when a worker dies holding it; a fresh delivery tag; priority 0). A test pins the result to what ``send_task``
itself writes, so a Celery or kombu upgrade that changes the layout fails loudly. It reads no kombu internals (the
entry is built from Celery's own message and kombu's documented envelope); everything that patches or reads them is
``worker/kombu_compat.py``, with the version bound (kombu 5.7, as in pyproject.toml) they were checked against.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from celery import Celery

from schemas.keys import TASK_MODERATE


def redis_entry(app: Celery, *, task_id: str, args: list[Any], queue: str, argsrepr: str) -> bytes:
    """The serialized message for the list named ``queue`` (priority 0, the only one guardq sends)."""
    task = app.amqp.as_task_v2(
        task_id,
        TASK_MODERATE,
        args=args,
        kwargs={},
        argsrepr=argsrepr,
        kwargsrepr="{}",
        ignore_result=None,  # what send_task puts there when the caller does not pass it
    )
    body = json.dumps(task.body, separators=(", ", ": ")).encode()
    properties = {
        **task.properties,
        "reply_to": app.thread_oid,  # send_task's default
        "argsrepr": argsrepr,  # send_task passes these on to kombu, which keeps them as properties too
        "kwargsrepr": "{}",
        "delivery_mode": 2,  # persistent
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": task.headers,
        "properties": properties,
    }
    return json.dumps(envelope).encode()
