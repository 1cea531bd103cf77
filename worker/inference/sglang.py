"""SGLang backend: OpenAI-compatible ``/v1/chat/completions`` over one long-lived HTTP client per process.

Request shape (DESIGN.md): one user message, the image part first (a ``data:`` URI of bytes the worker fetched
and validated) then the policy text; ``response_format`` is a JSON schema with ``rating``, ``category``,
``rationale`` in that order; temperature 0.2, top_p 0.95, top_k 50, 500 new tokens. 503/5xx/429 and timeouts are
transient; 400 is a permanent rejection; an invalid verdict is re-requested ``invalid_output_retries`` times.
"""

from __future__ import annotations

from typing import Any

import httpcore
import structlog

from schemas.errors import ErrorCode, PermanentError, TransientError
from schemas.events import ModelInfo
from schemas.models import ModelSpec
from schemas.settings import Settings
from schemas.verdict import verdict_json_schema
from worker.inference.base import InferenceRequest, InferenceResult
from worker.inference.http import TRANSPORT_ERRORS, HttpClient
from worker.inference.output import InvalidModelOutput, chat_rating_candidates, parse_verdict, score_from_response

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
            max_connections=settings.worker_concurrency + 4,
        )
        self._info: ModelInfo | None = None

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
                    "schema": verdict_json_schema(with_rationale=request.with_rationale),
                    "strict": True,
                },
            },
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "max_tokens": s.max_new_tokens,
            "rid": request.rid,
        }
        if request.want_score:
            body["logprobs"] = True
            body["top_logprobs"] = 5
        return body

    def infer(self, request: InferenceRequest) -> InferenceResult:
        attempts = self._settings.invalid_output_retries + 1
        for attempt in range(1, attempts + 1):
            rid = request.rid if attempt == 1 else f"{request.rid}.r{attempt}"
            payload = self._post(self.build_body(request) | {"rid": rid})
            try:
                return self._result(payload, request)
            except InvalidModelOutput as exc:
                log.warning("invalid_model_output", rid=rid, attempt=attempt, error=exc.message)
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
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
        raise PermanentError(f"SGLang rejected the request ({status}): {detail}", code=ErrorCode.INFERENCE_REJECTED)

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
        if finish == "length":
            raise InvalidModelOutput(
                f"model output hit max_tokens={self._settings.max_new_tokens} before the verdict closed"
            )
        score = score_from_response(payload) if request.want_score else None
        verdict = parse_verdict(text, with_rationale=request.with_rationale, unsafe_score=score)
        usage = payload.get("usage") or {}
        return InferenceResult(
            verdict=verdict,
            raw_text=text,
            finish_reason=finish,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )

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

    def ready(self, timeout_s: float = 5.0) -> bool:
        """True when the server can take requests: ``/ready`` (SGLang ≥0.5), else ``/health``."""
        try:
            response = self._http.get("/ready", timeout_s=timeout_s)
            if response.status == 404:
                response = self._http.get("/health", timeout_s=timeout_s)
        except TRANSPORT_ERRORS:
            return False
        return response.status == 200

    def live(self, timeout_s: float = 5.0) -> bool:
        """True when ``/health`` answers 200 (the liveness probe; 0.5.x runs a one-token generate behind it)."""
        try:
            return self._http.get("/health", timeout_s=timeout_s).status == 200
        except TRANSPORT_ERRORS:
            return False
