"""``guardq policy``: create, list, show, diff and delete stored policies; set tenants' defaults.

``guardq policy show`` without a name keeps its original job: print the exact text a model receives for the
built-in policy or for ad-hoc ``--non-violating``/``--sensitive`` declarations.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from producers.cli.common import fail, job_queue, settings
from producers.policy_store import PolicyStore, StoredPolicy, build_policy, describe, diff_policies, warnings_for
from schemas.errors import GuardqError
from schemas.logs import configure_logging
from schemas.models import ModelSpec, get_model
from schemas.policy import Policy, parse_policy_ref
from schemas.taxonomy import PromptVersion

policy_cli = typer.Typer(
    help="Manage safety policies (stored in Redis, versioned, per-tenant defaults).", no_args_is_help=True
)

NonViolating = Annotated[
    list[str] | None, typer.Option("--non-violating", help="Declare category Ox non-violating (repeatable).")
]
Sensitive = Annotated[
    list[str] | None,
    typer.Option("--sensitive", help="Declare category Ox sensitive (repeatable; not trained, warns)."),
]
ModelOpt = Annotated[
    str | None, typer.Option(help="Model whose prompt version renders the text (default GUARDQ_MODEL).")
]


def _store() -> PolicyStore:
    # Logs go to stderr and only errors: the command prints every fact (and the sensitive warning) itself.
    configure_logging(settings().log_format, "ERROR")
    return PolicyStore(job_queue().redis)


def _model(model: str | None) -> ModelSpec:
    try:
        return get_model(model or settings().model)
    except GuardqError as exc:
        fail(str(exc))


def _warn(policy: Policy) -> None:
    for warning in warnings_for(policy):
        typer.echo(f"guardq: warning: {warning}", err=True)


def _declarations(policy: Policy) -> str:
    return ", ".join(f"{code}={d.value}" for code, d in sorted(policy.declarations.items())) or "(all default)"


def _describe(stored: StoredPolicy, spec: ModelSpec) -> dict[str, object]:
    return describe(stored, spec.prompt_version) | {"sha256_model": spec.name}


@policy_cli.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Policy name (letters, digits, . _ -).")],
    base_version: Annotated[
        PromptVersion | None,
        typer.Option("--base-version", help="Pin the trained prompt version (default: the serving model's)."),
    ] = None,
    non_violating: NonViolating = None,
    sensitive: Sensitive = None,
    unsafe_threshold: Annotated[
        float | None,
        typer.Option("--unsafe-threshold", help="Route a Safe verdict with P(Unsafe) ≥ P to review (0 < P ≤ 1)."),
    ] = None,
    verdict_only: Annotated[
        bool, typer.Option("--verdict-only", help="Ask only for rating and category (no rationale): faster.")
    ] = False,
    rationale: Annotated[
        str,
        typer.Option(
            "--rationale",
            help="always (one pass) | flagged (verdict first; rationale only for Unsafe, or Safe at or above "
            "--unsafe-threshold) | never",
        ),
    ] = "always",
    first_frame_only: Annotated[
        bool,
        typer.Option("--first-frame-only", help="Animated images and videos: moderate only the first frame (cheaper)."),
    ] = False,
    image_detail: Annotated[
        str,
        typer.Option(
            "--image-detail",
            help="native (the checkpoint's own image processing) | base (one base tile: fewer tokens for 34B/OV)",
        ),
    ] = "native",
) -> None:
    """Store a new version of NAME (an identical definition keeps the current version) and print it as JSON."""
    try:
        candidate = build_policy(
            name,
            prompt_version=base_version,
            non_violating=non_violating or [],
            sensitive=sensitive or [],
            unsafe_threshold=unsafe_threshold,
            verdict_only=verdict_only,
            rationale=rationale,
            first_frame_only=first_frame_only,
            image_detail=image_detail,
        )
        result = _store().create(candidate)
    except GuardqError as exc:
        fail(str(exc))
    _warn(result.stored.policy)
    out = _describe(result.stored, _model(None)) | {"created": result.created}
    typer.echo(json.dumps(out, indent=2))


@policy_cli.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List stored policies (latest version of each) and tenants' defaults."""
    store = _store()
    policies = store.list()
    defaults = store.tenant_defaults()
    spec = _model(None)
    if as_json:
        for stored in policies:
            typer.echo(json.dumps(_describe(stored, spec)))
        return
    table = Table("name", "latest", "prompt", "declarations", "threshold", "rationale", "default for")
    for stored in policies:
        p = stored.policy
        tenants = sorted(t for t, ref in defaults.items() if parse_policy_ref(ref)[0] == p.name)
        table.add_row(
            p.name,
            str(p.version),
            p.prompt_version.value if p.prompt_version else "model's",
            _declarations(p),
            "" if p.unsafe_threshold is None else f"{p.unsafe_threshold:g}",
            p.rationale_mode,
            ", ".join(tenants),
        )
    Console().print(table)


@policy_cli.command("show")
def show(
    ref: Annotated[str | None, typer.Argument(help="Stored policy NAME or NAME@VERSION (omit for ad-hoc).")] = None,
    model: ModelOpt = None,
    non_violating: NonViolating = None,
    sensitive: Sensitive = None,
    text: Annotated[bool, typer.Option("--text", help="With NAME: print the policy text, not its JSON.")] = False,
) -> None:
    """Print a stored policy (JSON, or --text), or without NAME the exact text sent to the model."""
    spec = _model(model)
    if ref is not None:
        if non_violating or sensitive:
            fail("--non-violating/--sensitive apply to ad-hoc policies; omit NAME or use 'policy create'")
        try:
            stored = _store().get(ref)
        except GuardqError as exc:
            fail(str(exc), code=1)
        _warn(stored.policy)
        typer.echo(stored.policy.text(spec.prompt_version) if text else json.dumps(_describe(stored, spec), indent=2))
        return
    try:
        policy = build_policy("custom", non_violating=non_violating or [], sensitive=sensitive or [])
    except (GuardqError, ValidationError) as exc:
        fail(str(exc))
    _warn(policy)
    typer.echo(policy.text(spec.prompt_version))


@policy_cli.command("diff")
def diff(
    old: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME for the latest).")],
    new: Annotated[str | None, typer.Argument(help="NAME@VERSION to compare with (default: OLD's latest).")] = None,
    model: ModelOpt = None,
) -> None:
    """Show what changed between two versions: declarations, options and the policy text (unified diff)."""
    spec = _model(model)
    store = _store()
    try:
        a = store.get(old).policy
        b = store.get(new or parse_policy_ref(old)[0]).policy  # old resolved: well formed
    except GuardqError as exc:
        fail(str(exc), code=1)
    result = diff_policies(a, b, spec.prompt_version)
    typer.echo(f"--- {a.name}@{a.version}\n+++ {b.name}@{b.version}")
    if result.identical:
        typer.echo("(identical)")
        return
    for code, was, now in result.declarations:
        typer.echo(f"declaration {code}: {was} -> {now}")
    for name, was, now in result.options:
        typer.echo(f"{name}: {was} -> {now}")
    if result.text_diff:
        typer.echo(result.text_diff, nl=False)


@policy_cli.command("delete")
def delete(name: Annotated[str, typer.Argument(help="Policy name (all versions).")]) -> None:
    """Delete NAME: it leaves the list and stops resolving; pinned NAME@N keep working for queued jobs."""
    try:
        versions = _store().delete(name)
    except GuardqError as exc:
        fail(str(exc), code=1)
    typer.echo(f"deleted {name} ({versions} version(s) stay resolvable as {name}@N for queued jobs and audits)")


@policy_cli.command("set-default")
def set_default(
    ref: Annotated[str, typer.Argument(help="NAME (follows new versions), NAME@VERSION (pinned) or 'default'.")],
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant whose jobs without a policy use REF.")],
) -> None:
    """Make REF the policy for TENANT's jobs that name none ('default' restores the built-in policy)."""
    try:
        stored = _store().set_tenant_default(tenant, ref)
    except GuardqError as exc:
        fail(str(exc), code=1)
    if stored is None:
        typer.echo(f"tenant {tenant}: built-in default policy")
        return
    _warn(stored.policy)
    typer.echo(f"tenant {tenant}: {ref} (now {stored.ref})")
