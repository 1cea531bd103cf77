"""Stored policies: named, immutable, numbered versions in Redis, plus each tenant's default policy.

Layout (``schemas/keys.py``): hash ``guardq:policy:<name>`` with one field per version (``"1"``, ``"2"`` ...
holding that version's :class:`~schemas.policy.Policy` JSON), ``latest`` (the newest number), ``meta:<n>``
(creation facts) and, after a delete, ``deleted`` (a tombstone); set ``guardq:policies`` lists the names; hash
``guardq:policy-defaults`` maps tenant → policy reference. Workers read the same keys (``worker/policies.py``).

Versions are immutable: a change always writes the next number, and numbers are never reused, so
``name@3`` means the same text forever (events name the version and its sha256). Creating a version identical
to the latest one writes nothing and returns the latest.

Delete is a tombstone, not an erase: the name leaves ``list``, ``name`` (latest) stops resolving, but every
``name@N`` keeps resolving so queued and in-flight jobs that pinned a version finish and past events stay
auditable. Creating the name again continues the numbering and lifts the tombstone. A policy that is some
tenant's default cannot be deleted until that default changes.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import redis
import structlog
from pydantic import ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.keys import (
    POLICY_DELETED_FIELD,
    POLICY_INDEX,
    POLICY_LATEST_FIELD,
    TENANT_POLICY_DEFAULTS,
    policy_key,
    policy_meta_field,
)
from schemas.policy import BUILTIN_POLICY_NAME, SENSITIVE_WARNING, Policy, parse_policy_ref
from schemas.taxonomy import CATEGORY_BY_CODE, Declaration, PromptVersion


def _log() -> Any:
    """A logger bound at call time, so it follows the process's current structlog configuration."""
    return structlog.get_logger("guardq.policies")


_TENANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class InvalidPolicy(PermanentError):
    """Raised when a policy definition or reference cannot be accepted (unknown category, bad name ...)."""

    code = ErrorCode.INVALID_POLICY


class PolicyNotFound(PermanentError):
    """Raised when a policy name or version is not stored (or the name was deleted)."""

    code = ErrorCode.POLICY_UNKNOWN


class PolicyInUse(PermanentError):
    """Raised when deleting a policy that a tenant still uses as its default."""

    code = ErrorCode.POLICY_IN_USE


def category_code_of(value: str) -> str:
    """``"o9"``, ``"O9"`` or ``"O9: Disasters or Emergencies"`` → ``"O9"``; anything else is an InvalidPolicy."""
    code = value.split(":", 1)[0].strip().upper()
    if code not in CATEGORY_BY_CODE:
        valid = ", ".join(f"{c.code} ({c.name.split(': ', 1)[1]})" for c in CATEGORY_BY_CODE.values())
        raise InvalidPolicy(f"unknown policy category {value!r}; valid categories: {valid} (NA cannot be declared)")
    return code


def build_policy(
    name: str,
    *,
    prompt_version: PromptVersion | str | None = None,
    non_violating: Iterable[str] = (),
    sensitive: Iterable[str] = (),
    declarations: dict[str, str] | None = None,
    unsafe_threshold: float | None = None,
    verdict_only: bool = False,
    rationale: str = "always",
    version: int = 1,
    first_frame_only: bool = False,
    image_detail: str = "native",
) -> Policy:
    """Validate a policy definition into a :class:`Policy`, with one clear error for each kind of mistake."""
    if name == BUILTIN_POLICY_NAME:
        raise InvalidPolicy(f"{BUILTIN_POLICY_NAME!r} is the built-in trained policy; choose another name")
    decl: dict[str, Declaration] = {}
    for code, value in (declarations or {}).items():
        try:
            decl[category_code_of(code)] = Declaration(value)
        except ValueError:
            allowed = ", ".join(d.value for d in Declaration)
            raise InvalidPolicy(f"declaration {value!r} for {code} is not one of: {allowed}") from None
    for kind, items in ((Declaration.NON_VIOLATING, non_violating), (Declaration.SENSITIVE, sensitive)):
        for item in items:
            code = category_code_of(item)
            if decl.get(code, kind) is not kind:
                raise InvalidPolicy(f"category {code} is declared both {decl[code].value} and {kind.value}")
            decl[code] = kind
    try:
        return Policy(
            name=name,
            version=version,
            prompt_version=PromptVersion(prompt_version) if prompt_version else None,
            declarations=decl,
            unsafe_threshold=unsafe_threshold,
            verdict_only=verdict_only,
            rationale=rationale,  # validated by pydantic
            first_frame_only=first_frame_only,
            image_detail=image_detail,  # validated by pydantic
        )
    except ValueError as exc:  # pydantic's ValidationError and PromptVersion's ValueError
        raise InvalidPolicy(f"invalid policy {name!r}: {_first_problem(exc)}") from None


def _first_problem(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    return str(exc)


def _same_content(a: Policy, b: Policy) -> bool:
    keep = {
        "prompt_version",
        "declarations",
        "unsafe_threshold",
        "verdict_only",
        "rationale",
        "first_frame_only",
        "image_detail",
    }
    return a.model_dump(include=keep) == b.model_dump(include=keep)


@dataclass(frozen=True)
class StoredPolicy:
    """One stored version with its bookkeeping."""

    policy: Policy
    created_at: datetime | None
    deleted: bool = False

    @property
    def ref(self) -> str:
        return f"{self.policy.name}@{self.policy.version}"


@dataclass(frozen=True)
class CreateResult:
    """What ``create`` did: the version now current, whether it was new, and warnings for people."""

    stored: StoredPolicy
    created: bool
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PolicyDiff:
    """Differences between two stored versions: declarations, other options, and the rendered text."""

    old: Policy
    new: Policy
    declarations: list[tuple[str, str, str]]  # (code, old declaration, new declaration), changed ones only
    options: list[tuple[str, Any, Any]]  # (field, old, new) for prompt_version/unsafe_threshold/verdict_only
    text_diff: str  # unified diff of the policy texts the model reads

    @property
    def identical(self) -> bool:
        return not (self.declarations or self.options or self.text_diff)


def warnings_for(policy: Policy) -> list[str]:
    return [SENSITIVE_WARNING] if policy.uses_sensitive else []


def describe(stored: StoredPolicy, prompt_version: PromptVersion) -> dict[str, Any]:
    """A stored version as JSON (``guardq policy`` and ``/v1/policies``), with the sha256 of the text a model of
    ``prompt_version`` reads (the policy's pinned version wins) and the warnings for people."""
    p = stored.policy
    return {
        "name": p.name,
        "version": p.version,
        "ref": stored.ref,
        "prompt_version": p.prompt_version.value if p.prompt_version else None,
        "declarations": {k: v.value for k, v in p.declarations.items()},
        "unsafe_threshold": p.unsafe_threshold,
        "verdict_only": p.verdict_only,
        "rationale": p.rationale_mode,
        "first_frame_only": p.first_frame_only,
        "image_detail": p.image_detail,
        "created_at": stored.created_at.isoformat() if stored.created_at else None,
        "deleted": stored.deleted,
        "sha256": p.sha256(prompt_version),
        "text_prompt_version": (p.prompt_version or prompt_version).value,
        "warnings": warnings_for(p),
    }


class PolicyStore:
    """Create, read, diff and delete stored policies; set tenants' default policies."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._redis = client

    # --- writing -------------------------------------------------------------------------------------------
    def create(self, candidate: Policy) -> CreateResult:
        """Store ``candidate`` (its version is ignored) as the name's next version, unless it equals the latest."""
        if candidate.name == BUILTIN_POLICY_NAME:
            raise InvalidPolicy(f"{BUILTIN_POLICY_NAME!r} is the built-in trained policy; choose another name")
        key = policy_key(candidate.name)
        outcome: dict[str, Any] = {}

        def write(pipe: redis.client.Pipeline[bytes]) -> None:
            # In WATCH mode (before multi()) the pipeline executes at once and returns values.
            latest_raw, deleted = cast(list[bytes | None], pipe.hmget(key, [POLICY_LATEST_FIELD, POLICY_DELETED_FIELD]))
            latest = int(latest_raw) if latest_raw else 0
            if latest and not deleted:
                current = Policy.model_validate_json(cast(bytes, pipe.hget(key, str(latest))))
                if _same_content(current, candidate):
                    outcome["policy"], outcome["created"] = current, False
                    return
            policy = candidate.model_copy(update={"version": latest + 1})
            created_at = datetime.now(UTC)
            pipe.multi()
            pipe.hset(
                key,
                mapping={
                    str(policy.version): policy.model_dump_json(),
                    POLICY_LATEST_FIELD: str(policy.version),
                    policy_meta_field(policy.version): json.dumps({"created_at": created_at.isoformat()}),
                },
            )
            pipe.hdel(key, POLICY_DELETED_FIELD)
            pipe.sadd(POLICY_INDEX, candidate.name)
            outcome.update(policy=policy, created=True, created_at=created_at)

        self._redis.transaction(write, key)  # type: ignore[no-untyped-call]
        policy = outcome["policy"]
        stored = self.get(f"{policy.name}@{policy.version}") if not outcome["created"] else None
        stored = stored or StoredPolicy(policy=policy, created_at=outcome.get("created_at"))
        warnings = warnings_for(policy)
        if outcome["created"]:
            _log().info("policy_created", policy=policy.name, version=policy.version)
            if warnings:
                _log().warning("policy_uses_sensitive", policy=policy.name, version=policy.version, warning=warnings[0])
        return CreateResult(stored=stored, created=outcome["created"], warnings=warnings)

    def delete(self, name: str) -> int:
        """Tombstone ``name`` (see the module docstring); returns how many versions stay resolvable as name@N."""
        key = policy_key(name)
        latest = self._redis.hget(key, POLICY_LATEST_FIELD)
        if latest is None or self._redis.hexists(key, POLICY_DELETED_FIELD):
            raise PolicyNotFound(f"no stored policy {name!r}")
        users = sorted(t for t, ref in self.tenant_defaults().items() if parse_policy_ref(ref)[0] == name)
        if users:
            raise PolicyInUse(
                f"policy {name!r} is the default of tenant(s) {', '.join(users)}; "
                "change their default (guardq policy set-default) before deleting it"
            )
        pipe = self._redis.pipeline()
        pipe.hset(key, POLICY_DELETED_FIELD, datetime.now(UTC).isoformat())
        pipe.srem(POLICY_INDEX, name)
        pipe.execute()
        _log().info("policy_deleted", policy=name, versions=int(latest))
        return int(latest)

    def set_tenant_default(self, tenant: str, ref: str | None) -> StoredPolicy | None:
        """Make ``ref`` (``name`` follows the latest version, ``name@N`` pins one) the tenant's default; None clears."""
        if not _TENANT.fullmatch(tenant):
            raise InvalidPolicy(f"tenant {tenant!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if ref is None or ref == BUILTIN_POLICY_NAME:
            self._redis.hdel(TENANT_POLICY_DEFAULTS, tenant)
            return None
        stored = self.get(ref)
        self._redis.hset(TENANT_POLICY_DEFAULTS, tenant, ref)
        return stored

    # --- reading -------------------------------------------------------------------------------------------
    def get(self, ref: str) -> StoredPolicy:
        """The version ``ref`` names: ``name`` (latest; not after a delete) or ``name@N`` (always)."""
        try:
            name, version = parse_policy_ref(ref)
        except ValueError as exc:
            raise InvalidPolicy(str(exc)) from None
        key = policy_key(name)
        latest, deleted = self._redis.hmget(key, [POLICY_LATEST_FIELD, POLICY_DELETED_FIELD])
        if latest is None:
            raise PolicyNotFound(f"no stored policy {name!r} (guardq policy list shows the stored ones)")
        if version is None:
            if deleted:
                raise PolicyNotFound(f"policy {name!r} was deleted; only pinned versions ({name}@N) still resolve")
            version = int(latest)
        raw, meta = self._redis.hmget(key, [str(version), policy_meta_field(version)])
        if raw is None:
            raise PolicyNotFound(f"policy {name!r} has no version {version} (latest is {int(latest)})")
        created = json.loads(meta).get("created_at") if meta else None
        return StoredPolicy(
            policy=Policy.model_validate_json(raw),
            created_at=datetime.fromisoformat(created) if created else None,
            deleted=bool(deleted),
        )

    def versions(self, name: str) -> list[StoredPolicy]:
        """Every stored version of ``name``, oldest first."""
        latest = self.get(name).policy.version
        return [self.get(f"{name}@{v}") for v in range(1, latest + 1)]

    def list(self) -> list[StoredPolicy]:
        """The latest version of every stored (not deleted) policy, by name."""
        names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in self._redis.smembers(POLICY_INDEX))
        out = []
        for name in names:
            try:
                out.append(self.get(name))
            except PolicyNotFound:  # deleted between SMEMBERS and HGET
                continue
        return out

    def tenant_default(self, tenant: str) -> str | None:
        raw = self._redis.hget(TENANT_POLICY_DEFAULTS, tenant)
        return raw.decode() if isinstance(raw, bytes) else raw

    def tenant_defaults(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self._redis.hgetall(TENANT_POLICY_DEFAULTS).items()}

    def diff(self, old_ref: str, new_ref: str, model_prompt_version: PromptVersion) -> PolicyDiff:
        """Compare two stored versions (``name@1`` vs ``name@2``, or two different names)."""
        return diff_policies(self.get(old_ref).policy, self.get(new_ref).policy, model_prompt_version)


def diff_policies(old: Policy, new: Policy, model_prompt_version: PromptVersion) -> PolicyDiff:
    """Declarations changed, options changed, and a unified diff of the texts the model reads."""
    declarations = []
    for code in CATEGORY_BY_CODE:
        a = old.declarations.get(code, Declaration.DEFAULT)
        b = new.declarations.get(code, Declaration.DEFAULT)
        if a is not b:
            declarations.append((code, a.value, b.value))
    options = [
        (name, getattr(old, name), getattr(new, name))
        for name in (
            "prompt_version",
            "unsafe_threshold",
            "verdict_only",
            "rationale",
            "first_frame_only",
            "image_detail",
        )
        if getattr(old, name) != getattr(new, name)
    ]
    text = "".join(
        difflib.unified_diff(
            old.text(model_prompt_version).splitlines(keepends=True),
            new.text(model_prompt_version).splitlines(keepends=True),
            fromfile=f"{old.name}@{old.version}",
            tofile=f"{new.name}@{new.version}",
        )
    )
    return PolicyDiff(old=old, new=new, declarations=declarations, options=options, text_diff=text)
