"""SNS HTTP(S) subscriptions: the envelope, and confirming a subscription without becoming an SSRF proxy.

A ``SubscriptionConfirmation`` carries a ``SubscribeURL`` that must be fetched (GET) to confirm. Being a URL
from a request body, it is fetched only if it points at SNS itself: ``https://sns.<region>.amazonaws.com[.cn]/``
with ``Action=ConfirmSubscription`` (or a host listed in ``GUARDQ_SNS_CONFIRM_HOSTS``, e.g. a local SNS
stand-in, which may then use http), every address the host resolves to is public (or inside
``GUARDQ_URL_ALLOWED_NETWORKS``), the connection goes to a checked address, redirects are not followed, and the
wait is short. With ``GUARDQ_SNS_AUTO_CONFIRM=false`` nothing is fetched: the URL is returned (and logged) for
an operator to open. ``GUARDQ_SNS_TOPIC_ARNS`` restricts which topics are accepted at all.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpcore
import structlog

from producers.api.errors import ApiError
from schemas.errors import GuardqError
from schemas.netpolicy import AddressPolicy, GuardedBackend
from schemas.settings import Settings

log = structlog.get_logger("guardq.api")

_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
MESSAGE_TYPES = frozenset({"Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"})


class SnsConfirmer:
    def __init__(self, settings: Settings, *, timeout_s: float = 5.0) -> None:
        self.auto = settings.sns_auto_confirm
        self.topics = frozenset(settings.sns_topic_arns)
        self._extra_hosts = frozenset(settings.sns_confirm_hosts)
        self._timeout = timeout_s
        policy = AddressPolicy(settings.url_allowed_networks)
        self._pool = httpcore.ConnectionPool(network_backend=GuardedBackend(policy), max_connections=4, retries=0)

    def check_topic(self, topic_arn: str) -> None:
        if self.topics and topic_arn not in self.topics:
            raise ApiError(403, "topic_not_allowed", f"SNS topic {topic_arn!r} is not accepted here")

    def check_subscribe_url(self, url: str, topic_arn: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        listed = host in self._extra_hosts
        if not (listed or (parts.scheme == "https" and _SNS_HOST.match(host))) or parts.scheme not in {"https", "http"}:
            raise ApiError(400, "subscribe_url_not_allowed", f"SubscribeURL host {host!r} is not an SNS endpoint")
        query = parse_qs(parts.query)
        if query.get("Action") != ["ConfirmSubscription"] or query.get("TopicArn", [topic_arn]) != [topic_arn]:
            raise ApiError(400, "subscribe_url_not_allowed", "SubscribeURL is not a ConfirmSubscription for this topic")

    def confirm(self, url: str) -> None:
        """GET the SubscribeURL (already checked); 502 if SNS does not answer 2xx."""
        timeouts = {"connect": self._timeout, "read": self._timeout, "write": self._timeout, "pool": self._timeout}
        try:
            response = self._pool.request("GET", url, extensions={"timeout": timeouts})
        except GuardqError as exc:  # the address check refused the host (non-public address, no DNS answer)
            raise ApiError(502, "confirmation_failed", f"could not reach the SubscribeURL: {exc.message}") from None
        except httpcore.ConnectError as exc:
            raise ApiError(502, "confirmation_failed", f"could not reach the SubscribeURL: {exc}") from None
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise ApiError(502, "confirmation_failed", f"confirming the subscription failed: {exc!r}") from None
        if not 200 <= response.status < 300:
            raise ApiError(502, "confirmation_failed", f"SNS answered {response.status} to the confirmation")

    def close(self) -> None:
        self._pool.close()
