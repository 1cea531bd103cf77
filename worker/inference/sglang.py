"""SGLang backend: OpenAI-compatible ``/v1/chat/completions`` over one long-lived HTTP client per process.

Request shape (DESIGN.md): one user message, the image part first (a ``data:`` URI of bytes the worker fetched
and validated) then the policy text; ``response_format`` is a JSON schema with ``rating``, ``category``,
``rationale`` in that order, the rationale's ``maxLength`` sized to the token budget; temperature 0.2, top_p 0.95,
top_k 50, 500 new tokens. 503/5xx/429 and timeouts are transient; 400 is a permanent rejection; an invalid verdict
is re-requested ``invalid_output_retries`` times.

Tested against a real SGLang 0.5.17 (docs/sglang-real.md): its logprobs are tempered unless the server runs with
``SGLANG_RETURN_ORIGINAL_LOGPROB=1`` (``worker.inference.tempering`` finds out which, ``worker.inference.scores``
undoes the temperature); a budget cut inside the rationale keeps the verdict (``parse_truncated``); two requests
with the same ``rid`` in flight at once get a 400 "Duplicate request ID", so every call gets a ``rid`` of its own.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpcore
import structlog

from schemas.errors import ErrorCode, PermanentError, TransientError
from schemas.events import ModelInfo
from schemas.models import ModelSpec
from schemas.settings import Settings
from schemas.verdict import ScoreMethod, verdict_json_schema
from worker.inference.base import InferenceRequest, InferenceResult
from worker.inference.continuation import VERDICT_PRIORITY, continuation_body, parse_rationale, rationale_prefix
from worker.inference.http import TRANSPORT_ERRORS, HttpClient
from worker.inference.loads import loads_from_json, loads_from_metrics
from worker.inference.output import InvalidModelOutput, parse_truncated, parse_verdict
from worker.inference.scores import chat_rating_candidates, rating_score, response_candidates
from worker.inference.tempering import LogprobKindCache
from worker.inflight import ServerLoad

log = structlog.get_logger(__name__)
rating_candidates = chat_rating_candidates  # the chat-shape locator, kept under its original name


class SGLangBackend:
    """Talks to one SGLang server (or a router in front of several)."""

    def __init__(self, settings: Settings, model: ModelSpec, *, base_url: str | None = None) -> None:
        self._settings = settings
        self._model = model
        headers = {"Authorization": f"Bearer {settings.sglang_api_key}"} if settings.sglang_api_key else {}
        self._http = HttpClient(
            base_url or settings.sglang_url,
            headers=headers,
            timeout_s=settings.sglang_timeout_s,
            connect_timeout_s=settings.sglang_connect_timeout_s,
            max_connections=settings.max_in_flight() + 4,
        )
        self._info: ModelInfo | None = None
        self._logprobs = LogprobKindCache(settings.sglang_logprobs, self._probe_post)
        self._has_ready: bool | None = None  # whether the server has /ready (learned from its first answer)
        self._load_paths_missing: set[str] = set()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    @property
    def requests_in_flight(self) -> int:
        """Requests this process has at the server right now (the in-flight controller's view of its own share)."""
        return self._in_flight

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def close(self) -> None:
        self._http.close()

    def build_body(self, request: InferenceRequest) -> dict[str, Any]:
        s = self._settings
        body: dict[str, Any] = {
            "model": "default",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": request.image.data_uri()}},
                        {"type": "text", "text": request.policy_text},
                    ],
                }
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "llavaguard_verdict",
                    "schema": verdict_json_schema(
                        with_rationale=request.with_rationale, rationale_max_chars=s.rationale_chars()
                    ),
                    "strict": True,
                },
            },
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "max_tokens": s.max_new_tokens,
            "rid": request.rid,
        }
        if s.sglang_priority:
            body["priority"] = VERDICT_PRIORITY
        if request.want_score:
            body["logprobs"] = True
            body["top_logprobs"] = s.score_top_logprobs
        return body

    def infer(self, request: InferenceRequest) -> InferenceResult:
        if request.flagged_only and request.with_rationale:
            return self._infer_flagged(request)
        return self._with_retries(
            request.rid, lambda rid: self._result(self._post(self.build_body(request) | {"rid": rid}), request)
        )

    def _with_retries(self, base_rid: str, attempt_once: Callable[[str], InferenceResult]) -> InferenceResult:
        """Run one request, re-requesting an invalid output ``invalid_output_retries`` times."""
        attempts = self._settings.invalid_output_retries + 1
        for attempt in range(1, attempts + 1):
            # Unique per call: a redelivered job can run while its first delivery is still in flight somewhere.
            base = base_rid if attempt == 1 else f"{base_rid}.r{attempt}"
            rid = f"{base}.{secrets.token_hex(4)}"
            try:
                return attempt_once(rid)
            except InvalidModelOutput as exc:
                log.warning("invalid_model_output", rid=rid, attempt=attempt, error=exc.message)
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _infer_flagged(self, request: InferenceRequest) -> InferenceResult:
        """Verdict first; the rationale only for a flagged verdict, continued from its text (``continuation``)."""
        verdict_request = replace(request, with_rationale=False, flagged_only=False)
        first = self.infer(verdict_request)
        if not request.flagged(first.verdict):
            return replace(first, extra={**first.extra, "rationale_step": "skipped"})
        try:
            prefix, closing = rationale_prefix(first.raw_text)
        except InvalidModelOutput as exc:  # text around the object the prefix cannot be rebuilt from: one pass
            log.warning("rationale_continuation_unavailable", error=exc.message)
            one_pass = replace(request, flagged_only=False)
            return self._with_retries(
                request.rid, lambda rid: self._result(self._post(self.build_body(one_pass) | {"rid": rid}), one_pass)
            )
        budget = self._settings.max_new_tokens - (first.completion_tokens or 0)
        verdict_body = self.build_body(verdict_request)

        def continue_once(rid: str) -> InferenceResult:
            body = continuation_body(
                verdict_body, prefix, rationale_chars=self._settings.rationale_chars(), max_tokens=budget, rid=rid
            )
            payload = self._post(body)
            try:
                choice = payload["choices"][0]
                content = choice["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise InvalidModelOutput(f"SGLang continuation has no content: {str(payload)[:160]}") from None
            if choice.get("finish_reason") == "abort":
                raise TransientError("SGLang aborted the request", code=ErrorCode.INFERENCE_UNAVAILABLE)
            rationale, truncated = parse_rationale(content, finished=choice.get("finish_reason") != "length")
            usage = payload.get("usage") or {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            verdict = first.verdict.model_copy(
                update={"rationale": rationale, "rationale_truncated": True if truncated else None}
            )
            return InferenceResult(
                verdict=verdict,
                raw_text=prefix + content + closing + "}",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=first.prompt_tokens,
                completion_tokens=(first.completion_tokens or 0) + int(usage.get("completion_tokens") or 0),
                extra={
                    **first.extra,
                    "rationale_step": "continued",
                    "continuation_prompt_tokens": usage.get("prompt_tokens"),
                    "continuation_cached_tokens": cached,
                },
            )

        return self._with_retries(f"{request.rid}.c", continue_once)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            return self._send(body)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post_json("/v1/chat/completions", body)
        except httpcore.TimeoutException as exc:
            raise TransientError(
                f"SGLang did not answer within {self._settings.sglang_timeout_s:g}s ({type(exc).__name__})",
                code=ErrorCode.INFERENCE_TIMEOUT,
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise TransientError(
                f"SGLang at {self.base_url} unreachable: {exc!r}", code=ErrorCode.INFERENCE_UNAVAILABLE
            ) from None
        status = response.status
        if status == 200:
            try:
                data: dict[str, Any] = response.json()
            except ValueError:
                raise InvalidModelOutput(f"SGLang answered 200 with a non-JSON body: {response.text[:120]!r}") from None
            return data
        detail = response.text[:300]
        if status in {408, 429} or status >= 500:
            retry_after = response.headers.get("retry-after")
            raise TransientError(
                f"SGLang answered {status}: {detail}",
                code=ErrorCode.INFERENCE_UNAVAILABLE,
                retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        raise PermanentError(
            f"SGLang rejected the request ({status}): {detail}", code=ErrorCode.INFERENCE_REJECTED, status=status
        )

    def _result(self, payload: dict[str, Any], request: InferenceRequest) -> InferenceResult:
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise InvalidModelOutput(
                f"SGLang response has no choices[0].message.content: {str(payload)[:160]}"
            ) from None
        finish = choice.get("finish_reason")
        if finish == "abort":
            raise TransientError("SGLang aborted the request", code=ErrorCode.INFERENCE_UNAVAILABLE)
        score, method = self._score(payload) if request.want_score else (None, None)
        if finish == "length":
            if not request.with_rationale:
                raise InvalidModelOutput(
                    f"model output hit max_tokens={self._settings.max_new_tokens} before the verdict closed"
                )
            verdict = parse_truncated(text, unsafe_score=score, score_method=method)
            log.warning("rationale_truncated", completion_tokens=(payload.get("usage") or {}).get("completion_tokens"))
        else:
            verdict = parse_verdict(
                text, with_rationale=request.with_rationale, unsafe_score=score, score_method=method
            )
        usage = payload.get("usage") or {}
        return InferenceResult(
            verdict=verdict,
            raw_text=text,
            finish_reason=finish,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )

    def _score(self, payload: dict[str, Any]) -> tuple[float | None, ScoreMethod | None]:
        """P(Unsafe) with the server's temperature undone when its logprobs are tempered."""
        candidates = response_candidates(payload)
        if candidates is None:
            return None, None
        temperature = self._settings.temperature
        tempered = temperature > 0 and self._logprobs.kind() == "tempered"
        score = rating_score(candidates, temperature=temperature if tempered else 1.0)
        if score is None:
            return None, None
        if not score.complete:
            log.debug("rating_candidates_incomplete", candidates=len(candidates))
        return score.unsafe, "detempered" if tempered else "logprobs"

    def _probe_post(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """One logprob probe (``worker.inference.tempering``); None on any failure."""
        try:
            response = self._http.post_json("/v1/chat/completions", body, timeout_s=30.0)
            if response.status != 200:
                log.warning("sglang_logprob_probe_failed", status=response.status, detail=response.text[:200])
                return None
            data: dict[str, Any] = response.json()
            return data
        except (*TRANSPORT_ERRORS, ValueError) as exc:
            log.warning("sglang_logprob_probe_failed", error=repr(exc))
            return None

    def describe(self) -> ModelInfo:
        """Model facts from ``/model_info`` (``/get_model_info`` on older SGLang), fetched once."""
        if self._info is None:
            info: dict[str, Any] = {}
            for path in ("/model_info", "/get_model_info"):
                try:
                    response = self._http.get(path, timeout_s=5.0)
                except TRANSPORT_ERRORS:
                    break
                if response.status == 200:
                    info = response.json()
                    break
            described = ModelInfo(
                name=self._model.name,
                prompt_version=self._model.prompt_version,
                backend="sglang",
                served_model=info.get("model_path"),
                simulated=bool(info.get("guardq_simulated", False)),
            )
            if not info:
                return described  # server not answering yet: ask again next time
            self._info = described
        return self._info

    def probe_logprobs(self) -> str | None:
        """Find out (once, before jobs) whether the server's logprobs are tempered; see ``tempering``."""
        return self._logprobs.probe_now()

    def ready(self, timeout_s: float = 5.0) -> bool:
        """True when the server can take requests: ``/ready`` where it exists (newer SGLang), else ``/health``.

        0.5.17 has no ``/ready``; its ``/health`` answers 503 while the server starts and, once up, runs a
        one-token generation when idle (at least a second per probe).
        """
        try:
            if self._has_ready is not False:
                response = self._http.get("/ready", timeout_s=timeout_s)
                if response.status != 404:
                    self._has_ready = True
                    return response.status == 200
                self._has_ready = False
            response = self._http.get("/health", timeout_s=timeout_s)
        except TRANSPORT_ERRORS:
            return False
        return response.status == 200

    def load(self) -> ServerLoad | None:
        """The server's scheduler load: ``/v1/loads`` (0.5.17, always on), else ``/metrics`` (``--enable-metrics``).

        None when neither answers with numbers (an older server, a router, a server not up): the in-flight
        controller then keeps its limit.
        """
        for path in [p for p in ("/v1/loads", "/metrics") if p not in self._load_paths_missing]:
            try:
                response = self._http.get(path, timeout_s=2.0)
            except TRANSPORT_ERRORS:
                return None
            if response.status == 404:
                self._load_paths_missing.add(path)
                continue
            if response.status != 200:
                return None
            return loads_from_json(response.body) if path == "/v1/loads" else loads_from_metrics(response.text)
        return None

    def live(self, timeout_s: float = 5.0) -> bool:
        """True when ``/health`` answers 200 (the liveness probe; 0.5.x runs a one-token generate behind it)."""
        try:
            return self._http.get("/health", timeout_s=timeout_s).status == 200
        except TRANSPORT_ERRORS:
            return False
