"""Local inference backend: LlavaGuard ``-hf`` checkpoints in-process with transformers (``GUARDQ_BACKEND=transformers``).

For machines without SGLang: a laptop (CPU), an integrator's CI, one small GPU. The model loads on a background
thread when the worker starts (``ready()`` turns true once it is loaded); concurrent ``infer()`` calls from the
Celery threads are gathered by a :class:`~worker.inference.batching.DynamicBatcher` into left-padded batches of at
most ``GUARDQ_LOCAL_MAX_BATCH_SIZE`` within ``GUARDQ_LOCAL_BATCH_WAIT_MS`` and generated together. One worker
process per GPU, pinned with ``CUDA_VISIBLE_DEVICES`` like the SGLang fleet.

Errors: out of GPU memory splits the batch and, for a single request, is transient; any other failure of a
batch reruns its requests one by one so one bad request cannot fail its neighbours; then an input the processor
rejects is permanent (``inference_rejected``) and anything else transient (``inference_unavailable``). An
output that is not a valid verdict (the token budget ran out before it closed) is regenerated
``GUARDQ_INVALID_OUTPUT_RETRIES`` times, then fails as ``invalid_model_output`` — the SGLang backend's contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace

import structlog
import torch

from schemas.errors import ConfigError, ErrorCode, GuardqError, PermanentError, TransientError
from schemas.events import ModelInfo
from schemas.models import ModelSpec
from schemas.settings import Settings
from worker.inference.base import InferenceRequest, InferenceResult
from worker.inference.batching import BatcherClosed, DynamicBatcher
from worker.inference.continuation import parse_rationale, rationale_prefix
from worker.inference.hfmodel import Generation, LocalModel, Prompt, checkpoint_path
from worker.inference.output import InvalidModelOutput, parse_truncated, parse_verdict

log = structlog.get_logger(__name__)
_INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError)


class TransformersBackend:
    """Runs LlavaGuard with transformers in this process; batches concurrent requests dynamically."""

    def __init__(self, settings: Settings, model: ModelSpec) -> None:
        self._settings = settings
        self._model = model
        self._path = checkpoint_path(settings, model)
        self._local: LocalModel | None = None
        self._batcher: DynamicBatcher[Prompt, Generation] = DynamicBatcher(
            self._run_batch,
            max_batch_size=settings.local_max_batch_size,
            wait_s=settings.local_batch_wait_ms / 1000,
            on_start=self._load,
            name="guardq-local-generate",
        )

    @property
    def batches_run(self) -> int:
        """How many ``generate`` batches ran (for metrics and tests)."""
        return self._batcher.batches_run

    @property
    def local_model(self) -> LocalModel | None:
        return self._local

    def _load(self) -> None:
        local = LocalModel(self._settings, self._model)
        local.warm_up()
        self._local = local

    # -- InferenceBackend -------------------------------------------------------------------------------------

    def infer(self, request: InferenceRequest) -> InferenceResult:
        if request.flagged_only and request.with_rationale:
            return self._infer_flagged(request)
        prompt = Prompt(
            image=request.image.payload,
            policy_text=request.policy_text,
            with_rationale=request.with_rationale,
            want_score=request.want_score,
        )
        return self._with_retries(request, lambda: self._result(self._generate(prompt), request))

    def _with_retries(self, request: InferenceRequest, once: Callable[[], InferenceResult]) -> InferenceResult:
        attempts = self._settings.invalid_output_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return once()
            except InvalidModelOutput as exc:
                log.warning("invalid_model_output", rid=request.rid, attempt=attempt, error=exc.message)
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _infer_flagged(self, request: InferenceRequest) -> InferenceResult:
        """The SGLang backend's two steps: the verdict, then for a flagged one its rationale continued from it."""
        first = self.infer(replace(request, with_rationale=False, flagged_only=False))
        if not request.flagged(first.verdict):
            return replace(first, extra={**first.extra, "rationale_step": "skipped"})
        prefix, closing = rationale_prefix(first.raw_text)
        prompt = Prompt(request.image.payload, request.policy_text, True, False, prefix=prefix)

        def continue_once() -> InferenceResult:
            generation = self._generate(prompt)
            rationale, truncated = parse_rationale(generation.text, finished=generation.finish_reason != "length")
            verdict = first.verdict.model_copy(
                update={"rationale": rationale, "rationale_truncated": True if truncated else None}
            )
            return InferenceResult(
                verdict=verdict,
                raw_text=prefix + generation.text + closing + "}",
                finish_reason=generation.finish_reason,
                prompt_tokens=first.prompt_tokens,
                completion_tokens=(first.completion_tokens or 0) + generation.completion_tokens,
                extra={**first.extra, "rationale_step": "continued"},
            )

        return self._with_retries(request, continue_once)

    def describe(self) -> ModelInfo:
        return ModelInfo(
            name=self._model.name,
            prompt_version=self._model.prompt_version,
            backend="transformers",
            served_model=self._path,
        )

    def ready(self) -> bool:
        """True once the model is loaded; raises ConfigError if loading failed (it never will be ready)."""
        error = self._batcher.start_error
        if error is not None:
            if isinstance(error, GuardqError):
                raise error
            raise ConfigError(f"could not load {self._path} with transformers: {error!r}")
        return self._batcher.started

    def close(self) -> None:
        self._batcher.close()

    # -- internals --------------------------------------------------------------------------------------------

    def _generate(self, prompt: Prompt) -> Generation:
        future = self._batcher.submit(prompt)
        try:
            return future.result(timeout=self._settings.local_timeout_s)
        except FutureTimeout:
            future.cancel()
            raise TransientError(
                f"local inference did not finish within {self._settings.local_timeout_s:g}s",
                code=ErrorCode.INFERENCE_TIMEOUT,
            ) from None
        except BatcherClosed as exc:
            raise TransientError(str(exc), code=ErrorCode.INFERENCE_UNAVAILABLE) from None
        except GuardqError as exc:
            if exc is self._batcher.start_error:
                raise TransientError(
                    f"local model failed to load: {exc.message}", code=ErrorCode.INFERENCE_UNAVAILABLE
                ) from None
            raise
        except Exception as exc:  # a load failure reaches the callers that were already waiting
            raise TransientError(f"local model unavailable: {exc!r}", code=ErrorCode.INFERENCE_UNAVAILABLE) from None

    def _result(self, generation: Generation, request: InferenceRequest) -> InferenceResult:
        score = generation.unsafe_score if request.want_score else None
        if generation.finish_reason == "length":  # the SGLang backend's rule: keep a verdict cut in its rationale
            if not request.with_rationale:
                raise InvalidModelOutput(
                    f"model output hit max_new_tokens={self._settings.max_new_tokens} before the verdict closed"
                )
            verdict = parse_truncated(generation.text, unsafe_score=score, score_method="logits")
        else:
            verdict = parse_verdict(
                generation.text, with_rationale=request.with_rationale, unsafe_score=score, score_method="logits"
            )
        return InferenceResult(
            verdict=verdict,
            raw_text=generation.text,
            finish_reason=generation.finish_reason,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            extra={"batch_size": generation.batch_size, "generate_ms": generation.generate_ms},
        )

    def _run_batch(self, prompts: Sequence[Prompt]) -> list[Generation | BaseException]:
        """Generate a batch; split on out-of-memory, isolate requests on any other failure."""
        local = self._local
        if local is None:  # on_start failed; the batcher never calls us then
            raise TransientError("local model not loaded", code=ErrorCode.INFERENCE_UNAVAILABLE)
        try:
            return list(local.generate(prompts))
        except torch.cuda.OutOfMemoryError:
            if local.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(prompts) == 1:
                return [TransientError("out of GPU memory for one request", code=ErrorCode.INFERENCE_UNAVAILABLE)]
            half = len(prompts) // 2
            log.warning("local_batch_oom_split", batch_size=len(prompts))
            return self._run_batch(prompts[:half]) + self._run_batch(prompts[half:])
        except Exception as exc:
            if len(prompts) > 1:
                log.warning("local_batch_failed_isolating", batch_size=len(prompts), error=repr(exc))
                return [item for prompt in prompts for item in self._run_batch([prompt])]
            if isinstance(exc, _INPUT_ERRORS):
                return [PermanentError(f"the model rejected the input: {exc!r}", code=ErrorCode.INFERENCE_REJECTED)]
            return [TransientError(f"local generation failed: {exc!r}", code=ErrorCode.INFERENCE_UNAVAILABLE)]
