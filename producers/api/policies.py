"""``/v1/policies``: stored, versioned policies and the caller's tenant default policy.

Stored policies are shared definitions: every tenant may name any of them, so any valid API key reads them, and
creating a version or deleting a policy (which changes what every tenant naming it gets) needs the operators'
``policies`` scope. A tenant reads and sets only its own default policy (``/v1/policies/_tenants/{tenant}/default``
with its own tenant; setting it needs ``moderate``, the scope of the jobs it governs); another tenant's default
answers 404, like a resource that does not exist. Listings show only the caller's own default, except to a
``policies`` key.

A response for a policy that declares a category ``sensitive`` carries ``warnings`` (the released checkpoints
were not trained on it); the store logs the same warning once when the version is created.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from producers.api.auth import Principal
from producers.api.errors import ApiError
from producers.api.services import PrincipalDep, ServicesDep
from producers.policy_store import (
    InvalidPolicy,
    PolicyInUse,
    PolicyNotFound,
    build_policy,
    describe,
    diff_policies,
)
from schemas.errors import GuardqError
from schemas.models import get_model
from schemas.settings import Settings
from schemas.taxonomy import PromptVersion

router = APIRouter(prefix="/v1/policies", tags=["policies"])
ModelQuery = Annotated[str | None, Query(description="Model whose prompt version renders the text and sha256.")]
_STATUS: dict[type[GuardqError], int] = {InvalidPolicy: 422, PolicyNotFound: 404, PolicyInUse: 409}


class PolicyCreate(BaseModel):
    """Body of ``POST /v1/policies``: one new version of ``name``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    base_version: PromptVersion | None = Field(default=None, description="Pin v1.0/v1.1/v1.2; default: model's.")
    declarations: dict[str, str] = Field(default_factory=dict, description='e.g. {"O9": "non_violating"}')
    non_violating: list[str] = Field(default_factory=list)
    sensitive: list[str] = Field(default_factory=list)
    unsafe_threshold: float | None = None
    verdict_only: bool = False
    rationale: Literal["always", "flagged", "never"] = Field(
        default="always",
        description="always: one pass; flagged: verdict first, rationale only for Unsafe or Safe at/above "
        "unsafe_threshold; never: verdict only",
    )
    first_frame_only: bool = Field(default=False, description="Animated images and videos: moderate frame 0 only.")
    image_detail: Literal["native", "base"] = Field(
        default="native", description="native: the checkpoint's own image processing; base: one base tile (cheaper)"
    )


class TenantDefault(BaseModel):
    """Body of ``PUT /v1/policies/_tenants/{tenant}/default``."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="NAME (follows new versions), NAME@VERSION (pinned) or 'default' (built-in).")


def _refused(exc: GuardqError) -> ApiError:
    return ApiError.of(exc, _STATUS.get(type(exc), 422))


def _prompt_version(settings: Settings, model: str | None) -> PromptVersion:
    try:
        return get_model(model or settings.model).prompt_version
    except GuardqError as exc:
        raise ApiError(422, "model_unknown", exc.message, field="model") from None


def _own(who: Principal, tenant: str) -> None:
    if tenant != who.tenant:  # another tenant's default is reported as absent, never as forbidden
        raise ApiError(404, "not_found", f"no tenant {tenant!r} for this API key")


@router.post("", status_code=status.HTTP_201_CREATED, summary="Store a new version of a policy")
def create_policy(body: PolicyCreate, who: PrincipalDep, svc: ServicesDep, response: Response) -> dict[str, Any]:
    """Store the next version of ``name``; an unchanged definition answers 200 with the current version.

    Needs the ``policies`` scope: stored policies are shared by every tenant.
    """
    who.require("policies")
    try:
        candidate = build_policy(
            body.name,
            prompt_version=body.base_version,
            declarations=body.declarations,
            non_violating=body.non_violating,
            sensitive=body.sensitive,
            unsafe_threshold=body.unsafe_threshold,
            verdict_only=body.verdict_only,
            rationale=body.rationale,
            first_frame_only=body.first_frame_only,
            image_detail=body.image_detail,
        )
        result = svc.policies.create(candidate)
    except GuardqError as exc:
        raise _refused(exc) from None
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return describe(result.stored, _prompt_version(svc.settings, None)) | {"created": result.created}


@router.get("", summary="Every stored policy (latest versions) and tenant defaults")
def list_policies(who: PrincipalDep, svc: ServicesDep, model: ModelQuery = None) -> dict[str, Any]:
    """The latest version of every stored policy; ``tenant_defaults`` holds the caller's own default (all
    tenants' for a ``policies`` key)."""
    pv = _prompt_version(svc.settings, model)
    defaults = svc.policies.tenant_defaults()
    if "policies" not in who.scopes:
        defaults = {t: ref for t, ref in defaults.items() if t == who.tenant}
    return {"policies": [describe(s, pv) for s in svc.policies.list()], "tenant_defaults": defaults}


@router.get("/_tenants/{tenant}/default", summary="The caller's tenant default policy")
def get_tenant_default(tenant: str, who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    """The policy reference the tenant's jobs use when they name none (``default``: the built-in policy)."""
    _own(who, tenant)
    return {"tenant": tenant, "ref": svc.policies.tenant_default(tenant) or "default"}


@router.put("/_tenants/{tenant}/default", summary="Set the caller's tenant default policy")
def put_tenant_default(tenant: str, body: TenantDefault, who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    """Set the tenant's default policy; ``"default"`` restores the built-in one."""
    _own(who, tenant)
    who.require("moderate")
    try:
        stored = svc.policies.set_tenant_default(tenant, body.ref)
    except GuardqError as exc:
        raise _refused(exc) from None
    resolved = describe(stored, _prompt_version(svc.settings, None)) if stored else None
    return {"tenant": tenant, "ref": body.ref, "resolves_to": resolved}


@router.get("/{name}", summary="One version of a stored policy")
def get_policy(
    name: str, who: PrincipalDep, svc: ServicesDep, version: int | None = None, model: ModelQuery = None
) -> dict[str, Any]:
    """One version (``?version=N``; default the latest) with its sha256 for the model's prompt version."""
    try:
        stored = svc.policies.get(name if version is None else f"{name}@{version}")
    except GuardqError as exc:
        raise _refused(exc) from None
    return describe(stored, _prompt_version(svc.settings, model))


@router.get("/{name}/versions", summary="Every version of a stored policy")
def list_versions(name: str, who: PrincipalDep, svc: ServicesDep, model: ModelQuery = None) -> dict[str, Any]:
    """Every version of ``name``, oldest first."""
    pv = _prompt_version(svc.settings, model)
    try:
        return {"name": name, "versions": [describe(s, pv) for s in svc.policies.versions(name)]}
    except GuardqError as exc:
        raise _refused(exc) from None


@router.get("/{name}/diff", summary="What changed between two versions")
def diff_versions(
    name: str,
    who: PrincipalDep,
    svc: ServicesDep,
    from_: Annotated[int, Query(alias="from", ge=1)],
    to: Annotated[int | None, Query(ge=1)] = None,
    model: ModelQuery = None,
) -> dict[str, Any]:
    """Declarations and options that changed between two versions, and a unified diff of the policy text."""
    try:
        old = svc.policies.get(f"{name}@{from_}").policy
        new = svc.policies.get(name if to is None else f"{name}@{to}").policy
    except GuardqError as exc:
        raise _refused(exc) from None
    result = diff_policies(old, new, _prompt_version(svc.settings, model))
    return {
        "from": f"{old.name}@{old.version}",
        "to": f"{new.name}@{new.version}",
        "declarations": [{"category": c, "from": a, "to": b} for c, a, b in result.declarations],
        "options": [{"option": o, "from": a, "to": b} for o, a, b in result.options],
        "text_diff": result.text_diff,
    }


@router.delete("/{name}", summary="Delete a stored policy (a tombstone)")
def delete_policy(name: str, who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    """Delete ``name`` (``name@N`` keeps resolving for queued jobs and audits). Needs the ``policies`` scope."""
    who.require("policies")
    try:
        versions = svc.policies.delete(name)
    except GuardqError as exc:
        raise _refused(exc) from None
    return {"name": name, "deleted": True, "versions_still_pinnable": versions}
