"""Stored policies on a real Redis: versions, immutability, validation, delete semantics, tenant defaults."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import redis as redis_lib
import structlog

from producers.policy_store import (
    InvalidPolicy,
    PolicyInUse,
    PolicyNotFound,
    PolicyStore,
    build_policy,
)
from schemas.job import ImageRef, ModerationJob
from schemas.keys import policy_key
from schemas.policy import DEFAULT_POLICY, SENSITIVE_WARNING
from schemas.taxonomy import Declaration, PromptVersion
from worker.policies import PolicyResolver

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_client: redis_lib.Redis) -> PolicyStore:
    return PolicyStore(redis_client)


def unique(prefix: str = "pol") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def job(**kw: Any) -> ModerationJob:
    return ModerationJob(image=ImageRef.parse("s3://b/k.jpg"), **kw)


def test_each_change_creates_the_next_version_and_old_versions_stay_unchanged(store: PolicyStore) -> None:
    name = unique()
    v1 = store.create(build_policy(name, non_violating=["O9"])).stored
    v2 = store.create(build_policy(name, non_violating=["O9", "O6"], unsafe_threshold=0.3)).stored
    assert (1, 2) == (v1.policy.version, v2.policy.version)
    again = store.get(f"{name}@1").policy
    assert {"O9": Declaration.NON_VIOLATING} == dict(again.declarations)
    assert again.unsafe_threshold is None
    assert v2.policy == store.get(name).policy
    assert [1, 2] == [s.policy.version for s in store.versions(name)]
    assert v1.created_at is not None


def test_creating_an_identical_definition_keeps_the_current_version(store: PolicyStore) -> None:
    name = unique()
    first = store.create(build_policy(name, non_violating=["o9"]))
    second = store.create(build_policy(name, non_violating=["O9: Disasters or Emergencies"]))
    assert first.created and not second.created
    assert 1 == second.stored.policy.version


def test_concurrent_creates_get_distinct_versions(store: PolicyStore) -> None:
    name = unique()
    results: list[int] = []
    lock = threading.Lock()

    def create(threshold: float) -> None:
        version = store.create(build_policy(name, unsafe_threshold=threshold)).stored.policy.version
        with lock:
            results.append(version)

    threads = [threading.Thread(target=create, args=(0.1 + i / 100,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert list(range(1, 9)) == sorted(results)
    assert 8 == store.get(name).policy.version


def test_an_unknown_category_is_rejected_naming_the_valid_ones() -> None:
    with pytest.raises(InvalidPolicy, match=r"unknown policy category 'O10'; valid categories: O1 \(Hate"):
        build_policy("p", non_violating=["O10"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"non_violating": ["O2"], "sensitive": ["O2"]}, "declared both"),
        ({"unsafe_threshold": 1.5}, "unsafe_threshold"),
        ({"declarations": {"O3": "forbidden"}}, "not one of: default, non_violating, sensitive"),
        ({"prompt_version": "v9"}, "v9"),
    ],
    ids=["both-declarations", "threshold-range", "unknown-declaration", "unknown-prompt-version"],
)
def test_invalid_definitions_fail_with_a_clear_message(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPolicy, match=message):
        build_policy("p", **kwargs)


def test_the_builtin_name_and_malformed_names_cannot_be_stored(store: PolicyStore) -> None:
    with pytest.raises(InvalidPolicy, match="built-in"):
        build_policy("default")
    with pytest.raises(InvalidPolicy, match="name"):
        build_policy("has space")


def test_a_sensitive_declaration_warns_once_at_creation(store: PolicyStore) -> None:
    name = unique()
    with structlog.testing.capture_logs() as logs:
        result = store.create(build_policy(name, sensitive=["O2"]))
        again = store.create(build_policy(name, sensitive=["O2"]))
    assert [SENSITIVE_WARNING] == result.warnings == again.warnings
    assert 1 == sum(1 for e in logs if e["event"] == "policy_uses_sensitive")


def test_delete_hides_the_name_but_pinned_versions_still_resolve(store: PolicyStore, redis_client: Any) -> None:
    name = unique()
    store.create(build_policy(name, non_violating=["O9"]))
    store.create(build_policy(name, non_violating=["O8"]))
    assert 2 == store.delete(name)
    assert name not in [s.policy.name for s in store.list()]
    with pytest.raises(PolicyNotFound, match="deleted"):
        store.get(name)
    assert store.get(f"{name}@1").deleted
    resolver = PolicyResolver(redis_client)
    assert 2 == resolver.resolve(job(policy_ref=f"{name}@2")).version
    with pytest.raises(Exception, match="deleted"):
        resolver.resolve(job(policy_ref=name))


def test_recreating_a_deleted_name_continues_the_numbering(store: PolicyStore) -> None:
    name = unique()
    store.create(build_policy(name, non_violating=["O9"]))
    store.delete(name)
    again = store.create(build_policy(name, non_violating=["O9"]))
    assert again.created and 2 == again.stored.policy.version
    assert name in [s.policy.name for s in store.list()]


def test_deleting_an_unknown_policy_or_a_tenants_default_is_refused(store: PolicyStore) -> None:
    with pytest.raises(PolicyNotFound):
        store.delete(unique("missing"))
    name, tenant = unique(), unique("tenant")
    store.create(build_policy(name, non_violating=["O1"]))
    store.set_tenant_default(tenant, name)
    with pytest.raises(PolicyInUse, match=tenant):
        store.delete(name)
    store.set_tenant_default(tenant, None)
    assert 1 == store.delete(name)


def test_diff_lists_changed_declarations_options_and_the_text(store: PolicyStore) -> None:
    name = unique()
    store.create(build_policy(name, non_violating=["O9"]))
    store.create(build_policy(name, non_violating=["O6"], verdict_only=True))
    diff = store.diff(f"{name}@1", f"{name}@2", PromptVersion.V1_0)
    assert [("O6", "default", "non_violating"), ("O9", "non_violating", "default")] == diff.declarations
    assert [("verdict_only", False, True)] == diff.options
    assert diff.text_diff.startswith(f"--- {name}@1\n+++ {name}@2\n")
    assert "+Category O6 is declared as non-violating" in diff.text_diff
    assert store.diff(f"{name}@1", f"{name}@1", PromptVersion.V1_0).identical


def test_a_job_without_a_policy_uses_its_tenants_default(store: PolicyStore, redis_client: Any) -> None:
    name, tenant = unique(), unique("tenant")
    store.create(build_policy(name, non_violating=["O9"]))
    resolver = PolicyResolver(redis_client)
    assert DEFAULT_POLICY == resolver.resolve(job(tenant=tenant))
    store.set_tenant_default(tenant, name)
    assert (name, 1) == (resolver.resolve(job(tenant=tenant)).name, resolver.resolve(job(tenant=tenant)).version)
    store.create(build_policy(name, non_violating=["O8"]))
    assert 2 == resolver.resolve(job(tenant=tenant)).version  # a bare name follows new versions
    store.set_tenant_default(tenant, f"{name}@1")
    assert 1 == resolver.resolve(job(tenant=tenant)).version  # a pinned one does not
    assert DEFAULT_POLICY == resolver.resolve(job(tenant=tenant, policy_ref="default"))
    assert DEFAULT_POLICY == resolver.resolve(job(tenant=unique("other")))


def test_a_tenant_default_must_name_a_stored_policy(store: PolicyStore) -> None:
    with pytest.raises(PolicyNotFound):
        store.set_tenant_default(unique("tenant"), unique("missing"))
    with pytest.raises(InvalidPolicy, match="tenant"):
        store.set_tenant_default("bad tenant!", "x")


def test_stored_versions_are_plain_policy_json_the_worker_reads(store: PolicyStore, redis_client: Any) -> None:
    name = unique()
    store.create(build_policy(name, prompt_version="v1.2", sensitive=["O4"], unsafe_threshold=0.25))
    raw = redis_client.hget(policy_key(name), "1")
    policy = PolicyResolver(redis_client).resolve(job(policy_ref=f"{name}@1"))
    assert policy.model_dump_json().encode() == raw
    assert (PromptVersion.V1_2, 0.25, {"O4": Declaration.SENSITIVE}) == (
        policy.prompt_version,
        policy.unsafe_threshold,
        dict(policy.declarations),
    )
