"""API pieces that need no services: S3 event shapes, SNS SubscribeURL checks, credentials parsing, fingerprints."""

from __future__ import annotations

import base64

import pytest

from producers.api.auth import _token_from_header
from producers.api.errors import ApiError
from producers.api.idempotency import fingerprint, keyed_job_id
from producers.api.s3events import S3Record, parse_eventbridge, parse_records
from producers.api.sns import SnsConfirmer
from schemas.settings import Settings

TOPIC = "arn:aws:sns:eu-west-1:123456789012:t"


def test_direct_records_decode_plus_as_space_and_percent_escapes_as_utf8() -> None:
    doc = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "b"},
                    "object": {"key": "a/red+flower%2B%C3%A9.jpg", "size": 3, "sequencer": "0A"},
                },
            }
        ]
    }
    parsed = parse_records(doc, "direct")
    assert [S3Record("b", "a/red flower+é.jpg", 3, sequencer="0A")] == parsed.records


def test_minio_event_names_and_non_create_events_are_told_apart() -> None:
    records = [
        {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}},
        {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}},
        {"eventName": "ObjectRestore:Completed", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}},
    ]
    parsed = parse_records({"Records": records}, "direct")
    assert (1, 2) == (len(parsed.records), parsed.ignored)


def test_a_test_event_is_recognised_not_parsed() -> None:
    parsed = parse_records({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}, "sns")
    assert (True, []) == (parsed.test_event, parsed.records)


def test_eventbridge_keys_are_not_decoded_and_other_sources_are_refused() -> None:
    event = {
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {"bucket": {"name": "b"}, "object": {"key": "a+b%20.jpg", "version-id": "v"}},
    }
    assert [S3Record("b", "a+b%20.jpg", version_id="v", event_name="ObjectCreated:EventBridge")] == (
        parse_eventbridge(event).records
    )
    with pytest.raises(ApiError, match=r"expected aws\.s3"):
        parse_eventbridge({**event, "source": "aws.ec2"})


def test_a_record_without_sequencer_dedupes_on_etag_version_and_time() -> None:
    assert "e|v|t" == S3Record("b", "k", etag="e", version_id="v", event_time="t").dedupe_token
    assert "SEQ" == S3Record("b", "k", etag="e", sequencer="SEQ").dedupe_token


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (f"https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=x", True),
        (f"https://sns.cn-north-1.amazonaws.com.cn/?Action=ConfirmSubscription&TopicArn={TOPIC}", True),
        (f"http://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}", False),
        (f"https://sns.eu-west-1.amazonaws.com.attacker.io/?Action=ConfirmSubscription&TopicArn={TOPIC}", False),
        (f"https://user@169.254.169.254/?Action=ConfirmSubscription&TopicArn={TOPIC}", False),
        ("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:x:1:other", False),
        (f"https://sns.eu-west-1.amazonaws.com/?Action=Publish&TopicArn={TOPIC}", False),
        (f"http://stand-in.local:8080/?Action=ConfirmSubscription&TopicArn={TOPIC}", True),
    ],
)
def test_only_sns_confirmation_urls_for_the_same_topic_pass(url: str, allowed: bool) -> None:
    confirmer = SnsConfirmer(Settings(sns_confirm_hosts=["stand-in.local"]))
    try:
        if allowed:
            confirmer.check_subscribe_url(url, TOPIC)
        else:
            with pytest.raises(ApiError, match="SubscribeURL"):
                confirmer.check_subscribe_url(url, TOPIC)
    finally:
        confirmer.close()


@pytest.mark.parametrize(
    ("host", "address"),
    [("localhost", "127.0.0.1"), ("10.0.0.1", "10.0.0.1"), ("169.254.169.254", "169.254.169.254")],
    ids=["name-resolving-to-loopback", "private", "link-local-metadata"],
)
def test_a_listed_confirmation_host_resolving_to_a_non_public_address_is_never_connected_to(
    host: str, address: str
) -> None:
    """The confirming client checks every resolved address with schemas/netpolicy (the image fetcher's rules)."""
    confirmer = SnsConfirmer(Settings(sns_confirm_hosts=[host]))
    try:
        with pytest.raises(ApiError) as err:
            confirmer.confirm(f"http://{host}:9/?Action=ConfirmSubscription&TopicArn={TOPIC}")
    finally:
        confirmer.close()
    assert (502, "confirmation_failed") == (err.value.status, err.value.api_code)
    assert f"non-public address {address}" in err.value.message


def test_credentials_come_from_bearer_or_the_basic_password() -> None:
    basic = base64.b64encode(b"sns:gq_key").decode()
    assert "gq_key" == _token_from_header("Bearer gq_key")
    assert "gq_key" == _token_from_header(f"Basic {basic}")
    for bad in (None, "", "Bearer ", "Digest x", "Basic !!!"):
        with pytest.raises(ApiError) as err:
            _token_from_header(bad)
        assert 401 == err.value.status


def test_the_fingerprint_ignores_key_order_and_keyed_job_ids_are_per_tenant() -> None:
    assert fingerprint("POST", "/p", {"a": 1, "b": 2}) == fingerprint("POST", "/p", {"b": 2, "a": 1})
    assert fingerprint("POST", "/p", {"a": 1}) != fingerprint("POST", "/q", {"a": 1})
    assert keyed_job_id("t1", "k") == keyed_job_id("t1", "k") != keyed_job_id("t2", "k")


@pytest.mark.parametrize("bad", ["with space", "host/path", "host:80", "user@host"])
def test_sns_confirm_hosts_must_be_bare_host_names(bad: str) -> None:
    with pytest.raises(ValueError, match="bare host name"):
        Settings(sns_confirm_hosts=[bad])
