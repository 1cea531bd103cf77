"""Write an evaluation's ``metrics.json``, ``predictions.jsonl`` and ``report.md`` (with deltas to another run).

Percentages in the report are rounded to two places like LlavaGuard's own printout; ``metrics.json`` keeps
the fractions exactly as :mod:`producers.evaluation.metrics` computed them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from producers.evaluation.metrics import CATEGORY_CODES, Outcome, compute_metrics, read_prediction
from producers.evaluation.runner import EvalRun

FORMAT_VERSION = 1
HEADLINE = [
    ("balanced_accuracy", "Balanced accuracy"),
    ("recall", "Recall (TPR)"),
    ("specificity", "Specificity (TNR)"),
    ("precision", "Precision"),
    ("f1", "F1"),
    ("f2", "F2"),
    ("accuracy", "Accuracy"),
    ("category_accuracy", "Category accuracy"),
]


def outcomes(run: EvalRun) -> list[Outcome]:
    return [
        Outcome(r.sample.id, r.sample.rating, r.sample.category, read_prediction(r.verdict, r.sample.category))
        for r in run.results
    ]


def build_metrics(run: EvalRun) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    failures = Counter(r.error_code for r in run.results if r.error_code)
    completed = sum(1 for r in run.results if r.verdict is not None)
    return {
        "format": FORMAT_VERSION,
        "run": {
            "id": run.run_id,
            "dataset": str(run.dataset.path),
            "samples": len(run.results),
            "model": run.model,
            "policy": {
                "ref": run.policy_ref,
                "name": run.policy.name,
                "version": run.policy.version,
                "declarations": {k: v.value for k, v in run.policy.declarations.items()},
                "verdict_only": run.policy.verdict_only,
                "unsafe_threshold": run.policy.unsafe_threshold,
            },
            "started_at": run.started_at.isoformat(),
            "duration_s": run.duration_s,
            "images_per_s": round(completed / run.duration_s, 3) if run.duration_s else None,
            "simulated": run.simulated,
        },
        "metrics": compute_metrics(outcomes(run)),
        "completed": completed,
        "failed": dict(sorted(failures.items())),
        "needs_review": sum(1 for r in run.results if r.needs_review),
        "warnings": run.dataset.warnings,
    }


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _delta(now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return ""
    change = (now - before) * 100
    return f"{change:+.2f} pp"


def _get(metrics: dict[str, Any] | None, *path: str) -> Any:
    node: Any = metrics
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def render_report(
    metrics: dict[str, Any], *, compare: dict[str, Any] | None = None, plots: list[str] | None = None
) -> str:
    """``report.md``: run facts, headline metrics (with deltas), confusion matrix, categories, PER, failures."""
    run, m = metrics["run"], metrics["metrics"]
    o = m["overall"]
    lines = [f"# guardq evaluation `{run['id']}`", ""]
    if run.get("simulated"):
        lines += ["> **Simulated**: verdicts came from the SGLang test server, not from LlavaGuard.", ""]
    policy = run["policy"]
    decl = ", ".join(f"{k}={v}" for k, v in sorted(policy["declarations"].items())) or "none"
    lines += [
        f"- Dataset: `{run['dataset']}` ({run['samples']} samples: {o['unsafe_samples']} Unsafe, "
        f"{o['safe_samples']} Safe)",
        f"- Model: `{run['model']}`; policy `{policy['ref']}` (declarations: {decl}"
        f"{', verdict-only' if policy['verdict_only'] else ''})",
        f"- Duration: {run['duration_s']:.2f} s ({run['images_per_s']} images/s); started {run['started_at']}",
        f"- Completed {metrics['completed']}, failed {sum(metrics['failed'].values())}; "
        f"classified {o['classified']}/{o['samples']}; needs_review {metrics['needs_review']}",
    ]
    if compare:
        lines.append(f"- Compared with run `{_get(compare, 'run', 'id')}` ({_get(compare, 'run', 'dataset')})")
    lines += [
        "",
        "## Overall",
        "",
        "| Metric | Value |" + (" Δ |" if compare else ""),
        "|---|---|" + ("---|" if compare else ""),
    ]
    for key, label in HEADLINE:
        row = f"| {label} | {pct(o[key])} |"
        if compare:
            row += f" {_delta(o[key], _get(compare, 'metrics', 'overall', key))} |"
        lines.append(row)
    per_row = f"| Policy exception rate (PER) | {pct(m['policy_exception_rate']) if m['policy_exception_samples'] else 'n/a (no _v2/_v4 samples)'} |"
    if compare:
        per_row += f" {_delta(m['policy_exception_rate'], _get(compare, 'metrics', 'policy_exception_rate'))} |"
    lines += [per_row, ""]
    lines += [
        "## Confusion matrix (positive = Unsafe)",
        "",
        "| | predicted Unsafe | predicted Safe |",
        "|---|---|---|",
        f"| **truth Unsafe** | TP {o['tp']} | FN {o['fn']} |",
        f"| **truth Safe** | FP {o['fp']} | TN {o['tn']} |",
        "",
        f"Invalid (excluded from the matrix): {o['invalid']}; read by keyword fallback: {o['keyword_fallback']}; "
        f"unparsable (both): {o['unparsable']}. Category correct: {o['category_correct']}/{o['classified']}.",
        "",
    ]
    if m["policy_exception_samples"]:
        lines += [
            f"PER counts {m['policy_exception_samples']} classified policy-exception samples "
            "(`_v2`: category declared non-violating, truth Safe; `_v4`: declared sensitive, truth Unsafe).",
            "",
        ]
    if m["default_policy"]:
        d = m["default_policy"]
        lines += [
            "## Default-policy samples only (ids without `_v`)",
            "",
            f"Balanced accuracy {pct(d['balanced_accuracy'])}, recall {pct(d['recall'])}, "
            f"specificity {pct(d['specificity'])}, precision {pct(d['precision'])}; "
            f"TP {d['tp']}, FP {d['fp']}, TN {d['tn']}, FN {d['fn']}, invalid {d['invalid']}.",
            "",
        ]
    lines += _category_table(m["per_category"], _get(compare, "metrics", "per_category"))
    lines += _failures(metrics)
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    if metrics["warnings"]:
        lines += ["## Dataset warnings", ""] + [f"- {w}" for w in metrics["warnings"][:50]] + [""]
    return "\n".join(lines)


def _category_table(cats: dict[str, Any], before: dict[str, Any] | None) -> list[str]:
    head = "| Category | Samples (U/S) | Balanced accuracy | Recall |" + (" Δ bal. acc. |" if before else "")
    lines = ["## Per category (ground-truth category)", "", head, "|---|---|---|---|" + ("---|" if before else "")]
    for code in CATEGORY_CODES:
        c = cats.get(code)
        if c is None:
            lines.append(f"| {code} | 0 | no samples | |" + (" |" if before else ""))
            continue
        value = c["accuracy"] if code == "NA" else c["balanced_accuracy"]
        label = f"{pct(value)} (accuracy)" if code == "NA" else pct(value)
        recall = "" if code == "NA" else pct(c["recall"])
        row = f"| {code} | {c['samples']} ({c['unsafe_samples']}/{c['safe_samples']}) | {label} | {recall} |"
        if before:
            old = _get(before, code, "accuracy" if code == "NA" else "balanced_accuracy")
            row += f" {_delta(value, old)} |"
        lines.append(row)
    return [*lines, ""]


def _failures(metrics: dict[str, Any]) -> list[str]:
    if not metrics["failed"]:
        return ["## Failed or unparsable outputs", "", "None.", ""]
    rows = [f"| `{code}` | {count} |" for code, count in metrics["failed"].items()]
    return [
        "## Failed or unparsable outputs",
        "",
        "Counted as invalid (excluded from the confusion matrix, as LlavaGuard does); listed in predictions.jsonl.",
        "",
        "| Error code | Samples |",
        "|---|---|",
        *rows,
        "",
    ]


def write_outputs(
    run: EvalRun, out_dir: Path, *, compare: dict[str, Any] | None = None, with_plots: bool = True
) -> dict[str, Any]:
    """Write metrics.json, predictions.jsonl, the plots (when matplotlib is installed) and report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = build_metrics(run)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (out_dir / "predictions.jsonl").open("w") as handle:
        for result in run.results:
            handle.write(json.dumps(result.row()) + "\n")
    plots: list[str] = []
    if with_plots:
        from producers.evaluation.plots import write_plots

        plots = [str(p) for p in write_plots(metrics, out_dir, compare=compare)]
    (out_dir / "report.md").write_text(render_report(metrics, compare=compare, plots=plots))
    return metrics
