"""``/v1/policies`` (the APIRouter) mounted on a throwaway FastAPI app, backed by a real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis as redis_lib
from fastapi import FastAPI
from fastapi.testclient import TestClient

from producers.api_routes.policies import router
from producers.policy_store import PolicyStore
from schemas.policy import SENSITIVE_WARNING, Policy
from schemas.settings import Settings
from schemas.taxonomy import PromptVersion

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_client: redis_lib.Redis, settings: Settings) -> TestClient:
    app = FastAPI()
    app.state.policy_store = PolicyStore(redis_client)
    app.state.settings = settings
    app.include_router(router)
    return TestClient(app)


def name() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


def test_post_creates_a_version_and_an_identical_post_returns_it_unchanged(client: TestClient) -> None:
    n = name()
    first = client.post("/v1/policies", json={"name": n, "declarations": {"O9": "non_violating"}})
    assert 201 == first.status_code
    body = first.json()
    expected_sha = Policy(name=n, declarations={"O9": "non_violating"}).sha256(PromptVersion.V1_0)
    assert (1, True, expected_sha, []) == (body["version"], body["created"], body["sha256"], body["warnings"])
    again = client.post("/v1/policies", json={"name": n, "non_violating": ["O9"]})
    assert (200, 1, False) == (again.status_code, again.json()["version"], again.json()["created"])
    changed = client.post("/v1/policies", json={"name": n, "non_violating": ["O9"], "unsafe_threshold": 0.4})
    assert (201, 2) == (changed.status_code, changed.json()["version"])


def test_a_sensitive_policy_answers_with_a_warning(client: TestClient) -> None:
    response = client.post("/v1/policies", json={"name": name(), "sensitive": ["O2"]})
    assert 201 == response.status_code
    assert [SENSITIVE_WARNING] == response.json()["warnings"]


def test_an_unknown_category_is_a_422_naming_the_valid_ones(client: TestClient) -> None:
    response = client.post("/v1/policies", json={"name": name(), "non_violating": ["O11"]})
    assert 422 == response.status_code
    detail = response.json()["detail"]
    assert "invalid_policy" == detail["code"]
    assert "valid categories: O1 (Hate, Humiliation, Harassment)" in detail["message"]


def test_get_versions_diff_and_delete(client: TestClient) -> None:
    n = name()
    client.post("/v1/policies", json={"name": n, "non_violating": ["O9"]})
    client.post("/v1/policies", json={"name": n, "non_violating": ["O9"], "verdict_only": True})
    assert 2 == client.get(f"/v1/policies/{n}").json()["version"]
    assert 1 == client.get(f"/v1/policies/{n}", params={"version": 1}).json()["version"]
    versions = client.get(f"/v1/policies/{n}/versions").json()["versions"]
    assert [1, 2] == [v["version"] for v in versions]
    diff = client.get(f"/v1/policies/{n}/diff", params={"from": 1, "to": 2}).json()
    assert ([], [{"option": "verdict_only", "from": False, "to": True}], "") == (
        diff["declarations"],
        diff["options"],
        diff["text_diff"],
    )
    assert n in [p["name"] for p in client.get("/v1/policies").json()["policies"]]
    deleted = client.delete(f"/v1/policies/{n}")
    assert (200, 2) == (deleted.status_code, deleted.json()["versions_still_pinnable"])
    assert 404 == client.get(f"/v1/policies/{n}").status_code
    assert 200 == client.get(f"/v1/policies/{n}", params={"version": 1}).status_code
    assert n not in [p["name"] for p in client.get("/v1/policies").json()["policies"]]


def test_unknown_policies_and_versions_are_404(client: TestClient) -> None:
    assert 404 == client.get(f"/v1/policies/{name()}").status_code
    n = name()
    client.post("/v1/policies", json={"name": n})
    assert 404 == client.get(f"/v1/policies/{n}", params={"version": 5}).status_code


def test_tenant_defaults_are_set_read_and_block_deletion(client: TestClient) -> None:
    n, tenant = name(), f"t-{uuid.uuid4().hex[:8]}"
    client.post("/v1/policies", json={"name": n, "non_violating": ["O1"]})
    assert "default" == client.get(f"/v1/policies/_tenants/{tenant}/default").json()["ref"]
    put = client.put(f"/v1/policies/_tenants/{tenant}/default", json={"ref": f"{n}@1"})
    assert (200, f"{n}@1") == (put.status_code, put.json()["resolves_to"]["ref"])
    assert f"{n}@1" == client.get(f"/v1/policies/_tenants/{tenant}/default").json()["ref"]
    blocked = client.delete(f"/v1/policies/{n}")
    assert (409, "policy_in_use") == (blocked.status_code, blocked.json()["detail"]["code"])
    missing = client.put(f"/v1/policies/_tenants/{tenant}/default", json={"ref": "nope-" + tenant})
    assert 404 == missing.status_code
    client.put(f"/v1/policies/_tenants/{tenant}/default", json={"ref": "default"})
    assert 200 == client.delete(f"/v1/policies/{n}").status_code
