"""``guardq enqueue``: queue s3:// URIs, http(s) URLs and local files (stored in the upload store)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from producers.cli.common import check_callback_url, check_policy_ref, fail, job_queue, parse_meta, settings
from producers.uploads import UploadStore
from schemas.errors import GuardqError
from schemas.job import ImageRef, ModerationJob, Priority
from schemas.models import get_model
from schemas.policy import Policy
from schemas.taxonomy import Declaration
from worker.delivery import last_id, wait_for


def _sources(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item == "-":
            out.extend(line.strip() for line in sys.stdin if line.strip() and not line.startswith("#"))
        else:
            out.append(item)
    return out


def _reference(source: str, store: UploadStore) -> ImageRef:
    if "://" in source:
        return ImageRef.parse(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{source!r} is neither a URI (s3://, http(s)://, upload://) nor a readable file")
    return store.put(path.read_bytes(), extension=path.suffix or None)


def enqueue(
    sources: Annotated[
        list[str], typer.Argument(help="s3://bucket/key, https://..., upload://key, a file, or - for stdin")
    ],
    model: Annotated[str | None, typer.Option(help="Model (default GUARDQ_MODEL).")] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Stored policy NAME[@VERSION].")] = None,
    non_violating: Annotated[
        list[str] | None, typer.Option("--non-violating", help="Declare Ox non-violating.")
    ] = None,
    sensitive: Annotated[list[str] | None, typer.Option("--sensitive", help="Declare Ox sensitive.")] = None,
    tenant: Annotated[str, typer.Option(help="Tenant the job belongs to.")] = "default",
    meta: Annotated[list[str] | None, typer.Option("--meta", help="Metadata KEY=VALUE (repeatable).")] = None,
    callback_url: Annotated[
        str | None,
        typer.Option("--callback-url", help="https:// URL that gets each job's signed verdict (a public address)."),
    ] = None,
    bulk: Annotated[bool, typer.Option("--bulk", help="Queue behind interactive work.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Print each job's terminal event (JSON) when it arrives.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits for all events.")] = 300.0,
) -> None:
    """Queue one job per source and print its job id (with --wait: its terminal event instead)."""
    cfg = settings()
    items = _sources(sources)
    if not items:
        fail("no sources given")
    try:
        spec = get_model(model or cfg.model)
        inline: Policy | None = None
        declarations = dict.fromkeys(non_violating or [], Declaration.NON_VIOLATING)
        declarations |= dict.fromkeys(sensitive or [], Declaration.SENSITIVE)
        if declarations:
            if policy:
                fail("--policy cannot be combined with --non-violating/--sensitive")
            inline = Policy(name="custom", declarations=declarations)
    except (GuardqError, ValidationError) as exc:
        fail(str(exc).splitlines()[0] if isinstance(exc, GuardqError) else _first_error(exc))
    check_policy_ref(policy)
    check_callback_url(callback_url)
    store = UploadStore(cfg)
    jobs: list[ModerationJob] = []
    for source in items:
        extra = {} if "://" in source else {"source_file": Path(source).name}
        try:
            jobs.append(
                ModerationJob(
                    image=_reference(source, store),
                    model=spec.name,
                    policy=inline,
                    policy_ref=policy,
                    tenant=tenant,
                    metadata=extra | parse_meta(meta or []),
                    priority=Priority.BULK if bulk else Priority.INTERACTIVE,
                    callback_url=callback_url,
                )
            )
        except ValidationError as exc:
            fail(f"{source}: {_first_error(exc)}")
        except ValueError as exc:
            fail(str(exc))
    queue = job_queue()
    start = last_id(queue.redis) if wait else "$"
    for job in jobs:
        queue.send(job)
        typer.echo(job.job_id, err=wait)
    if wait:
        seen = 0
        for event in wait_for(queue.redis, [j.job_id for j in jobs], after=start, timeout_s=timeout):
            typer.echo(event.to_json())
            seen += 1
        if seen < len(jobs):
            fail(f"{len(jobs) - seen} of {len(jobs)} jobs had no terminal event after {timeout:g}s", code=4)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
