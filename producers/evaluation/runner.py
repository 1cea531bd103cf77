"""Run an evaluation set through the real pipeline: upload, enqueue (JobQueue), wait for terminal events.

Every sample ends with a result: its verdict, or the failed event's error code, or ``missing_image`` (a local
file that does not exist, so no job was sent), or ``timeout`` (no terminal event before ``--timeout``).
Nothing is dropped: failures count as invalid in the metrics and are listed in the report.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producers.broker import JobQueue
from producers.evaluation.dataset import Dataset, EvalSample
from producers.policy_store import PolicyStore
from producers.uploads import UploadStore
from schemas.events import CloudEvent
from schemas.job import ImageRef, ModerationJob, Priority
from schemas.models import get_model
from schemas.policy import BUILTIN_POLICY_NAME, DEFAULT_POLICY, Policy
from worker.delivery import last_id, wait_for


@dataclass
class SampleResult:
    """What happened to one sample."""

    sample: EvalSample
    job_id: str | None
    verdict: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    needs_review: bool = False
    simulated: bool = False
    policy_sha256: str | None = None

    def row(self) -> dict[str, Any]:
        """One line of ``predictions.jsonl``."""
        return {
            "id": self.sample.id,
            "image": self.sample.image,
            "gt": {"rating": self.sample.rating, "category": self.sample.category},
            "declarations": {k: v.value for k, v in self.sample.declarations.items()},
            "job_id": self.job_id,
            "prediction": self.verdict,
            "needs_review": self.needs_review,
            "error": {"code": self.error_code, "message": self.error_message} if self.error_code else None,
            "policy_sha256": self.policy_sha256,
        }


@dataclass
class EvalRun:
    """All results of one run plus the facts the report names."""

    run_id: str
    dataset: Dataset
    model: str
    policy: Policy
    policy_ref: str
    results: list[SampleResult] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration_s: float = 0.0

    @property
    def simulated(self) -> bool:
        return any(r.simulated for r in self.results)


def sample_policy(base: Policy, sample: EvalSample) -> Policy | None:
    """An inline policy for a sample with its own declarations (on top of the base's), else None."""
    if not sample.declarations:
        return None
    return base.model_copy(
        update={"name": f"{base.name[:50]}.sample", "declarations": base.declarations | sample.declarations}
    )


class EvalRunner:
    """Sends one job per sample under a pinned base policy and collects the terminal events."""

    def __init__(self, queue: JobQueue, uploads: UploadStore, policies: PolicyStore) -> None:
        self._queue = queue
        self._uploads = uploads
        self._policies = policies

    def base_policy(self, ref: str | None) -> tuple[Policy, str]:
        """The base policy and a pinned reference (``name@N``) so a new version mid-run changes nothing."""
        if ref is None or ref == BUILTIN_POLICY_NAME:
            return DEFAULT_POLICY, BUILTIN_POLICY_NAME
        stored = self._policies.get(ref)
        return stored.policy, stored.ref

    def run(
        self,
        dataset: Dataset,
        *,
        model: str,
        policy_ref: str | None = None,
        timeout_s: float = 600.0,
        tenant: str = "eval",
        progress: Callable[[int, int], None] | None = None,
        image_detail: str | None = None,
    ) -> EvalRun:
        """``image_detail`` overrides the policy's level (every job then carries its policy inline)."""
        spec = get_model(model)
        base, pinned = self.base_policy(policy_ref)
        if image_detail is not None:
            base = base.model_copy(update={"image_detail": image_detail})
        run = EvalRun(run_id=uuid.uuid4().hex[:12], dataset=dataset, model=spec.name, policy=base, policy_ref=pinned)
        started = time.monotonic()
        jobs: dict[str, SampleResult] = {}
        pending: list[ModerationJob] = []
        for index, sample in enumerate(dataset.samples):
            result = SampleResult(sample=sample, job_id=None)
            run.results.append(result)
            image = self._image(sample, result)
            if image is None:
                continue
            inline = sample_policy(base, sample) or (base if image_detail is not None else None)
            job = ModerationJob(
                job_id=f"eval-{run.run_id}-{index}",
                image=image,
                model=spec.name,
                policy=inline,
                policy_ref=None if inline else pinned,
                tenant=tenant,
                metadata={"eval_run": run.run_id, "eval_sample": sample.id},
                priority=Priority.BULK,
            )
            result.job_id = job.job_id
            jobs[job.job_id] = result
            pending.append(job)
        after = last_id(self._queue.redis)
        for job in pending:
            self._queue.send(job)
        events = wait_for(self._queue.redis, list(jobs), after=after, timeout_s=timeout_s)
        for done, event in enumerate(events, 1):
            _record(jobs[event.data.job_id], event)
            if progress:
                progress(done, len(jobs))
        for result in jobs.values():
            if result.verdict is None and result.error_code is None:
                result.error_code = "timeout"
                result.error_message = f"no terminal event within {timeout_s:g}s"
        run.duration_s = round(time.monotonic() - started, 3)
        return run

    def _image(self, sample: EvalSample, result: SampleResult) -> ImageRef | None:
        if "://" in sample.image:
            return ImageRef.parse(sample.image)
        path = Path(sample.image)
        if not path.is_file():
            result.error_code, result.error_message = "missing_image", f"no file {path}"
            return None
        return self._uploads.put(path.read_bytes(), extension=path.suffix.lstrip(".") or None)


def _record(result: SampleResult, event: CloudEvent) -> None:
    data = event.data
    result.simulated = bool(data.model and data.model.simulated)
    result.policy_sha256 = data.policy.sha256 if data.policy else None
    if data.verdict is not None:
        result.verdict = data.verdict.model_dump(mode="json")
        result.needs_review = data.needs_review
    elif data.error is not None:
        result.error_code, result.error_message = data.error.code.value, data.error.message
