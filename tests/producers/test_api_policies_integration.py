"""``/v1/policies`` through real HTTP (uvicorn on a free port, httpx) with per-tenant API keys: stored policies are
shared definitions any key reads and only a ``policies`` key writes; a tenant sees and sets only its own default."""

from __future__ import annotations

import uuid

import httpx
import pytest

from producers.api.auth import ApiKeyStore
from schemas.policy import SENSITIVE_WARNING, Policy
from schemas.taxonomy import PromptVersion
from tests.producers.conftest import ApiServer, bearer

pytestmark = pytest.mark.integration


class Caller:
    """One tenant's API key against the running API."""

    def __init__(self, api: ApiServer, keys: ApiKeyStore, *scopes: str) -> None:
        self.tenant = f"t-{uuid.uuid4().hex[:8]}"
        self.token = keys.create(self.tenant, *([scopes] if scopes else []))[1]
        self.base = f"{api.url}/v1/policies"

    def __call__(self, method: str, path: str = "", **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{self.base}{path}", headers=bearer(self.token), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def admin(api: ApiServer, keys: ApiKeyStore) -> Caller:
    return Caller(api, keys, "policies")


@pytest.fixture
def tenant(api: ApiServer, keys: ApiKeyStore) -> Caller:
    return Caller(api, keys)  # the default scopes: moderate, intake, webhooks


def name() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


def test_an_operator_key_creates_versions_and_an_identical_definition_returns_the_current_one(admin: Caller) -> None:
    n = name()
    first = admin("POST", json={"name": n, "declarations": {"O9": "non_violating"}})
    assert 201 == first.status_code, first.text
    body = first.json()
    expected_sha = Policy(name=n, declarations={"O9": "non_violating"}).sha256(PromptVersion.V1_0)
    assert (1, True, expected_sha, []) == (body["version"], body["created"], body["sha256"], body["warnings"])
    again = admin("POST", json={"name": n, "non_violating": ["O9"]})
    assert (200, 1, False) == (again.status_code, again.json()["version"], again.json()["created"])
    changed = admin("POST", json={"name": n, "non_violating": ["O9"], "unsafe_threshold": 0.4})
    assert (201, 2) == (changed.status_code, changed.json()["version"])


def test_a_sensitive_declaration_is_stored_with_a_warning_in_the_create_response(admin: Caller) -> None:
    response = admin("POST", json={"name": name(), "sensitive": ["O2"]})
    assert (201, [SENSITIVE_WARNING]) == (response.status_code, response.json()["warnings"])


def test_an_unknown_category_is_a_422_naming_the_valid_ones(admin: Caller) -> None:
    response = admin("POST", json={"name": name(), "non_violating": ["O11"]})
    error = response.json()["error"]
    assert (422, "invalid_policy") == (response.status_code, error["code"])
    assert "valid categories: O1 (Hate, Humiliation, Harassment)" in error["message"]


def test_every_tenant_reads_the_shared_definitions_but_only_an_operator_key_writes_them(
    admin: Caller, tenant: Caller
) -> None:
    n = name()
    refused = tenant("POST", json={"name": n})
    assert (403, "forbidden") == (refused.status_code, refused.json()["error"]["code"])
    admin("POST", json={"name": n, "non_violating": ["O9"]})
    admin("POST", json={"name": n, "non_violating": ["O9"], "verdict_only": True})

    assert 2 == tenant("GET", f"/{n}").json()["version"]
    assert 1 == tenant("GET", f"/{n}", params={"version": 1}).json()["version"]
    assert [1, 2] == [v["version"] for v in tenant("GET", f"/{n}/versions").json()["versions"]]
    diff = tenant("GET", f"/{n}/diff", params={"from": 1, "to": 2}).json()
    assert ([], [{"option": "verdict_only", "from": False, "to": True}], "") == (
        diff["declarations"],
        diff["options"],
        diff["text_diff"],
    )
    assert n in [p["name"] for p in tenant("GET").json()["policies"]]
    assert 403 == tenant("DELETE", f"/{n}").status_code

    deleted = admin("DELETE", f"/{n}")
    assert (200, 2) == (deleted.status_code, deleted.json()["versions_still_pinnable"])
    assert (404, "policy_unknown") == (
        tenant("GET", f"/{n}").status_code,
        tenant("GET", f"/{n}").json()["error"]["code"],
    )
    assert 200 == tenant("GET", f"/{n}", params={"version": 1}).status_code  # pinned versions stay resolvable
    assert n not in [p["name"] for p in tenant("GET").json()["policies"]]


def test_requests_without_a_valid_key_are_401(api: ApiServer) -> None:
    missing = httpx.get(f"{api.url}/v1/policies")
    malformed = httpx.get(f"{api.url}/v1/policies", headers=bearer("not-a-key"))
    unknown = httpx.post(f"{api.url}/v1/policies", json={"name": name()}, headers=bearer("gq_0123456789ab_" + "x" * 43))
    assert [(401, "missing_api_key"), (401, "invalid_api_key"), (401, "invalid_api_key")] == [
        (r.status_code, r.json()["error"]["code"]) for r in (missing, malformed, unknown)
    ]
    assert 'Bearer realm="guardq"' == missing.headers["www-authenticate"]


def test_a_tenant_sets_and_reads_only_its_own_default_and_another_tenants_default_is_404(
    admin: Caller, tenant: Caller, api: ApiServer, keys: ApiKeyStore
) -> None:
    other = Caller(api, keys)
    n = name()
    admin("POST", json={"name": n, "non_violating": ["O1"]})
    own = f"/_tenants/{tenant.tenant}/default"
    assert "default" == tenant("GET", own).json()["ref"]

    put = tenant("PUT", own, json={"ref": f"{n}@1"})
    assert (200, f"{n}@1") == (put.status_code, put.json()["resolves_to"]["ref"])
    assert f"{n}@1" == tenant("GET", own).json()["ref"]
    assert {tenant.tenant: f"{n}@1"} == tenant("GET").json()["tenant_defaults"]  # its own default only
    assert tenant.tenant not in other("GET").json()["tenant_defaults"]
    assert tenant.tenant in admin("GET").json()["tenant_defaults"]  # an operator sees every tenant's

    for method, body in (("GET", None), ("PUT", {"ref": "default"})):
        answer = other(method, own, json=body)
        assert (404, "not_found") == (answer.status_code, answer.json()["error"]["code"])
    assert f"{n}@1" == tenant("GET", own).json()["ref"]  # untouched by the other tenant

    blocked = admin("DELETE", f"/{n}")
    assert (409, "policy_in_use") == (blocked.status_code, blocked.json()["error"]["code"])
    missing = tenant("PUT", own, json={"ref": f"nope-{n}"})
    assert (404, "policy_unknown") == (missing.status_code, missing.json()["error"]["code"])
    tenant("PUT", own, json={"ref": "default"})
    assert 200 == admin("DELETE", f"/{n}").status_code


def test_setting_the_default_needs_the_moderate_scope(api: ApiServer, keys: ApiKeyStore) -> None:
    intake_only = Caller(api, keys, "intake")
    answer = intake_only("PUT", f"/_tenants/{intake_only.tenant}/default", json={"ref": "default"})
    assert (403, "forbidden") == (answer.status_code, answer.json()["error"]["code"])
    assert 200 == intake_only("GET", f"/_tenants/{intake_only.tenant}/default").status_code
