"""``guardq eval DATASET``: run a labelled set through the pipeline and report LlavaGuard's metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from producers.cli.common import fail, job_queue, settings
from producers.evaluation.dataset import load_dataset
from producers.evaluation.report import pct, write_outputs
from producers.evaluation.runner import EvalRunner
from producers.policy_store import PolicyStore
from producers.uploads import UploadStore
from schemas.errors import GuardqError
from schemas.logs import configure_logging
from schemas.models import get_model


def _compare(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"--compare {path}: cannot read metrics.json ({exc})")
    if not isinstance(data, dict) or "metrics" not in data:
        fail(f"--compare {path}: not a guardq eval metrics.json")
    return data


def _levels(value: str | None) -> list[str]:
    if value is None:
        return []
    levels = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in levels if v not in ("native", "base")]
    if bad or not levels:
        fail(f"--image-detail: {', '.join(bad) or value!r} is not a level; use native, base or native,base")
    return levels


def levels_table(model: str, per_level: dict[str, dict[str, Any]]) -> str:
    """Accuracy per image-detail level, side by side (``OUT/levels.md``)."""
    rows = [
        f"# Image detail levels on {model}",
        "",
        "| level | balanced accuracy | recall | precision | invalid | samples | run time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for level, metrics in per_level.items():
        o = metrics["metrics"]["overall"]
        rows.append(
            f"| {level} | {pct(o['balanced_accuracy'])} | {pct(o['recall'])} | {pct(o['precision'])} | {o['invalid']} "
            f"| {o['samples']} | {metrics['duration_s']:g} |"
        )
    return "\n".join(rows) + "\n"


def evaluate(
    dataset: Annotated[Path, typer.Argument(help="JSONL, JSON array (LlavaGuard-DS) or CSV of labelled images.")],
    out: Annotated[Path, typer.Option(help="Folder for report.md, metrics.json, predictions.jsonl, PNGs.")] = Path(
        "eval-out"
    ),
    model: Annotated[str | None, typer.Option(help="Model (default GUARDQ_MODEL).")] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="Stored base policy, NAME or NAME@VERSION (default: built-in); pinned for the run."),
    ] = None,
    compare: Annotated[Path | None, typer.Option(help="Another run's metrics.json: show deltas.")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for all verdicts.")] = 3600.0,
    image_root: Annotated[
        Path | None, typer.Option(help="Base folder of relative image paths (default: the dataset's).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N samples.")] = None,
    tenant: Annotated[str, typer.Option(help="Tenant the evaluation jobs run as.")] = "eval",
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots (no matplotlib needed).")] = False,
    image_detail: Annotated[
        str | None,
        typer.Option(
            "--image-detail",
            help="Evaluate at these image-detail levels, e.g. 'native,base': one report per level in OUT/<level>/ "
            "and OUT/levels.md side by side (the accuracy cost of a cheaper level, measured on your data).",
        ),
    ] = None,
) -> None:
    """Evaluate DATASET end to end (queue → workers → SGLang) and write the report; prints the headline."""
    cfg = settings()
    configure_logging(cfg.log_format, "WARNING")
    other = _compare(compare)
    levels = _levels(image_detail)
    try:
        spec = get_model(model or cfg.model)
        data = load_dataset(dataset, image_root=image_root, limit=limit)
        queue = job_queue()
        runner = EvalRunner(queue, UploadStore(cfg), PolicyStore(queue.redis))
        typer.echo(f"evaluating {len(data.samples)} samples from {dataset} with {spec.name}", err=True)

        def progress(done: int, total: int) -> None:
            if done == total or done % max(1, total // 10) == 0:
                typer.echo(f"  {done}/{total} verdicts", err=True)

        per_level: dict[str, dict[str, Any]] = {}
        chosen: list[str | None] = [*levels] or [None]
        for level in chosen:
            where = out / level if level else out
            run = runner.run(
                data,
                model=spec.name,
                policy_ref=policy,
                timeout_s=timeout,
                tenant=tenant,
                progress=progress,
                image_detail=level,
            )
            metrics = write_outputs(run, where, compare=other, with_plots=not no_plots)
            if level:
                per_level[level] = metrics | {"duration_s": run.duration_s}
        if per_level:
            (out / "levels.md").write_text(levels_table(spec.name, per_level))
    except GuardqError as exc:
        fail(str(exc))
    o, m = metrics["metrics"]["overall"], metrics["metrics"]
    per = pct(m["policy_exception_rate"]) if m["policy_exception_samples"] else "n/a"
    typer.echo(
        f"balanced accuracy {pct(o['balanced_accuracy'])}, recall {pct(o['recall'])}, PER {per}; "
        f"TP {o['tp']} FP {o['fp']} TN {o['tn']} FN {o['fn']}, invalid {o['invalid']} "
        f"(failed: {metrics['failed'] or 'none'})"
    )
    typer.echo(f"report: {out / 'report.md'}")
