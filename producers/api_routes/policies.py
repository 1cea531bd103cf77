"""``/v1/policies``: stored, versioned policies and tenants' default policies over HTTP (a FastAPI APIRouter).

Mount with ``app.include_router(router)``. The routes use ``app.state.policy_store`` (a
:class:`~producers.policy_store.PolicyStore`) and ``app.state.settings`` when the app sets them, else one of
each per process built from ``GUARDQ_*``. Errors answer ``{"detail": {"code": ..., "message": ...}}`` with
422 (invalid definition), 404 (unknown policy or version) or 409 (deleting a tenant's default).

A response for a policy that declares a category ``sensitive`` carries ``warnings`` (the released checkpoints
were not trained on it); the store logs the same warning once when the version is created.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from producers.policy_store import (
    InvalidPolicy,
    PolicyInUse,
    PolicyNotFound,
    PolicyStore,
    StoredPolicy,
    build_policy,
    diff_policies,
    warnings_for,
)
from schemas.errors import GuardqError
from schemas.models import get_model
from schemas.settings import Settings, load_settings
from schemas.taxonomy import PromptVersion

router = APIRouter(prefix="/v1/policies", tags=["policies"])


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


class TenantDefault(BaseModel):
    """Body of ``PUT /v1/policies/_tenants/{tenant}/default``."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="NAME (follows new versions), NAME@VERSION (pinned) or 'default' (built-in).")


@lru_cache(maxsize=1)
def _process_settings() -> Settings:
    return load_settings()


@lru_cache(maxsize=1)
def _process_store() -> PolicyStore:
    return PolicyStore(redis.Redis.from_url(_process_settings().redis_url, socket_timeout=30))


def get_settings(request: Request) -> Settings:
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings or _process_settings()


def get_policy_store(request: Request) -> PolicyStore:
    store: PolicyStore | None = getattr(request.app.state, "policy_store", None)
    return store or _process_store()


Store = Annotated[PolicyStore, Depends(get_policy_store)]
Config = Annotated[Settings, Depends(get_settings)]
ModelQuery = Annotated[str | None, Query(description="Model whose prompt version renders the text and sha256.")]


def _http_error(exc: GuardqError) -> HTTPException:
    statuses: dict[type[GuardqError], int] = {InvalidPolicy: 422, PolicyNotFound: 404, PolicyInUse: 409}
    code = statuses.get(type(exc), 400)
    return HTTPException(status_code=code, detail={"code": exc.code.value, "message": exc.message})


def _prompt_version(settings: Settings, model: str | None) -> PromptVersion:
    try:
        return get_model(model or settings.model).prompt_version
    except GuardqError as exc:
        raise HTTPException(422, detail={"code": exc.code.value, "message": exc.message}) from None


def _view(stored: StoredPolicy, prompt_version: PromptVersion) -> dict[str, Any]:
    p = stored.policy
    return {
        "name": p.name,
        "version": p.version,
        "ref": stored.ref,
        "prompt_version": p.prompt_version.value if p.prompt_version else None,
        "declarations": {k: v.value for k, v in p.declarations.items()},
        "unsafe_threshold": p.unsafe_threshold,
        "verdict_only": p.verdict_only,
        "created_at": stored.created_at.isoformat() if stored.created_at else None,
        "deleted": stored.deleted,
        "sha256": p.sha256(prompt_version),
        "text_prompt_version": (p.prompt_version or prompt_version).value,
        "warnings": warnings_for(p),
    }


@router.post("", status_code=status.HTTP_201_CREATED)
def create_policy(body: PolicyCreate, store: Store, settings: Config, response: Response) -> dict[str, Any]:
    """Store the next version of ``name``; an unchanged definition answers 200 with the current version."""
    try:
        candidate = build_policy(
            body.name,
            prompt_version=body.base_version,
            declarations=body.declarations,
            non_violating=body.non_violating,
            sensitive=body.sensitive,
            unsafe_threshold=body.unsafe_threshold,
            verdict_only=body.verdict_only,
        )
        result = store.create(candidate)
    except GuardqError as exc:
        raise _http_error(exc) from None
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return _view(result.stored, _prompt_version(settings, None)) | {"created": result.created}


@router.get("")
def list_policies(store: Store, settings: Config, model: ModelQuery = None) -> dict[str, Any]:
    """The latest version of every stored policy, and each tenant's default reference."""
    pv = _prompt_version(settings, model)
    return {"policies": [_view(s, pv) for s in store.list()], "tenant_defaults": store.tenant_defaults()}


@router.get("/_tenants/{tenant}/default")
def get_tenant_default(tenant: str, store: Store) -> dict[str, Any]:
    """The policy reference a tenant's jobs use when they name none (``default``: the built-in policy)."""
    return {"tenant": tenant, "ref": store.tenant_default(tenant) or "default"}


@router.put("/_tenants/{tenant}/default")
def put_tenant_default(tenant: str, body: TenantDefault, store: Store, settings: Config) -> dict[str, Any]:
    """Set a tenant's default policy; ``"default"`` restores the built-in one."""
    try:
        stored = store.set_tenant_default(tenant, body.ref)
    except GuardqError as exc:
        raise _http_error(exc) from None
    resolved = _view(stored, _prompt_version(settings, None)) if stored else None
    return {"tenant": tenant, "ref": body.ref, "resolves_to": resolved}


@router.get("/{name}")
def get_policy(
    name: str, store: Store, settings: Config, version: int | None = None, model: ModelQuery = None
) -> dict[str, Any]:
    """One version (``?version=N``; default the latest) with its sha256 for the model's prompt version."""
    try:
        stored = store.get(name if version is None else f"{name}@{version}")
    except GuardqError as exc:
        raise _http_error(exc) from None
    return _view(stored, _prompt_version(settings, model))


@router.get("/{name}/versions")
def list_versions(name: str, store: Store, settings: Config, model: ModelQuery = None) -> dict[str, Any]:
    """Every version of ``name``, oldest first."""
    pv = _prompt_version(settings, model)
    try:
        return {"name": name, "versions": [_view(s, pv) for s in store.versions(name)]}
    except GuardqError as exc:
        raise _http_error(exc) from None


@router.get("/{name}/diff")
def diff_versions(
    name: str,
    store: Store,
    settings: Config,
    from_: Annotated[int, Query(alias="from", ge=1)],
    to: Annotated[int | None, Query(ge=1)] = None,
    model: ModelQuery = None,
) -> dict[str, Any]:
    """Declarations and options that changed between two versions, and a unified diff of the policy text."""
    try:
        old = store.get(f"{name}@{from_}").policy
        new = store.get(name if to is None else f"{name}@{to}").policy
    except GuardqError as exc:
        raise _http_error(exc) from None
    result = diff_policies(old, new, _prompt_version(settings, model))
    return {
        "from": f"{old.name}@{old.version}",
        "to": f"{new.name}@{new.version}",
        "declarations": [{"category": c, "from": a, "to": b} for c, a, b in result.declarations],
        "options": [{"option": o, "from": a, "to": b} for o, a, b in result.options],
        "text_diff": result.text_diff,
    }


@router.delete("/{name}")
def delete_policy(name: str, store: Store) -> dict[str, Any]:
    """Delete ``name`` (a tombstone: ``name@N`` keeps resolving for queued jobs and audits)."""
    try:
        versions = store.delete(name)
    except GuardqError as exc:
        raise _http_error(exc) from None
    return {"name": name, "deleted": True, "versions_still_pinnable": versions}
