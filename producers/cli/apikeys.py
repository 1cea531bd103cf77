"""``guardq api-keys create|list|revoke TENANT``: manage the API's per-tenant keys (stored hashed in Redis)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from producers.api.auth import DEFAULT_SCOPES, SCOPES, ApiKeyStore
from producers.cli.common import fail, job_queue, redis_errors

apikeys_cli = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys of a tenant.")


def _store() -> ApiKeyStore:
    return ApiKeyStore(job_queue().redis)


@apikeys_cli.command("create")
def create(
    tenant: Annotated[str, typer.Argument(help="Tenant the key acts for (goes onto every job).")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help=f"Allowed scope, repeatable: {', '.join(SCOPES)} (default {', '.join(DEFAULT_SCOPES)}; "
            "'policies' lets the key create and delete the stored policies all tenants share).",
        ),
    ] = None,
    bucket: Annotated[
        list[str] | None, typer.Option("--bucket", help="Only these S3 buckets may be named (repeatable).")
    ] = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    with redis_errors():
        try:
            key_id, token = _store().create(tenant, tuple(scope or DEFAULT_SCOPES), tuple(bucket or ()))
        except ValueError as exc:
            fail(str(exc))
    typer.echo(token)
    typer.echo(f"key id {key_id} for tenant {tenant}: store the key now, it cannot be shown again", err=True)


@apikeys_cli.command("list")
def list_keys(
    tenant: Annotated[str, typer.Argument(help="Tenant whose keys to list.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List a tenant's keys (ids, scopes, buckets, created/revoked); secrets are never shown."""
    with redis_errors():
        keys = _store().list(tenant)
    for info in keys:
        row = {
            "key_id": info.key_id,
            "tenant": info.tenant,
            "scopes": list(info.scopes),
            "buckets": list(info.buckets),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.created_at)),
            "revoked": info.revoked_at is not None,
        }
        if as_json:
            typer.echo(json.dumps(row))
        else:
            state = "revoked" if row["revoked"] else "active"
            buckets = ",".join(info.buckets) or "any bucket"
            typer.echo(f"{info.key_id}  {state:<7}  {','.join(info.scopes):<24} {buckets:<20} {row['created_at']}")


@apikeys_cli.command("revoke")
def revoke(
    tenant: Annotated[str, typer.Argument(help="Tenant owning the key.")],
    key_id: Annotated[str, typer.Argument(help="Key id (from create or list).")],
) -> None:
    """Revoke a key: its requests then get 403."""
    with redis_errors():
        if not _store().revoke(tenant, key_id):
            fail(f"tenant {tenant!r} has no key {key_id!r}", code=1)
    typer.echo(f"revoked {key_id}")
