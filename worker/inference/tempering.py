"""Are a server's logprobs tempered? Ask it once: the same one-token request at two temperatures.

SGLang reports ``log(softmax(logits / T))`` by default and untempered values when the server process runs with
``SGLANG_RETURN_ORIGINAL_LOGPROB=1`` (measured on 0.5.17: identical values at T = 0.2 and 1.0 with it, gaps 5x
apart without it). Nothing in its HTTP API says which, so for a server guardq did not launch (``--sglang-url``, a
router) the worker sends the probe: one tiny image and a short question, ``max_tokens`` 1, at T = 1.0 and T =
0.25, and compares the spread of the returned top candidates. Tempered values spread 4x wider at T = 0.25;
untempered ones do not move. ``GUARDQ_SGLANG_LOGPROBS=tempered|original`` skips the probe.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import structlog
from PIL import Image

log = structlog.get_logger(__name__)

LogprobKind = Literal["tempered", "original"]
PROBE_TEMPERATURES = (1.0, 0.25)
RECHECK_S = 600.0  # a server can be restarted with another environment: ask again after this long
RETRY_S = 30.0  # after an inconclusive probe


def _probe_image() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


_PROBE_IMAGE = _probe_image()


def probe_body(temperature: float, rid: str) -> dict[str, Any]:
    return {
        "model": "default",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _PROBE_IMAGE}},
                    {"type": "text", "text": "Is this image safe? Answer with one word."},
                ],
            }
        ],
        "temperature": temperature,
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 10,  # the real server merges candidates with the same text: 5 asked gave 2 back
        "rid": rid,
    }


def spread(payload: dict[str, Any]) -> float | None:
    """Best minus worst finite logprob among the first token's candidates (None when unreadable or flat)."""
    try:
        candidates = payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        values = [float(c["logprob"]) for c in candidates]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    finite = [v for v in values if math.isfinite(v) and v > -1e30]
    if len(finite) < 2 or max(finite) - min(finite) < 1e-4:
        return None
    return max(finite) - min(finite)


def classify(spread_hot: float, spread_cold: float) -> LogprobKind:
    """Tempered values scale with 1/T (ratio 4 for T 1.0 vs 0.25); untempered ones keep their spread (ratio 1)."""
    ratio = spread_cold / spread_hot
    return "tempered" if ratio > 2.0 else "original"


class LogprobKindCache:
    """What kind of logprobs one server returns: configured, or probed and re-checked every ``RECHECK_S``.

    Jobs never wait for a probe: behind a full batch the probe's two requests queue like any other (seen on a
    saturated test server: every worker thread stalled for seven seconds on the first probe). The worker probes
    once before it consumes (:meth:`probe_now`); later checks run on a thread of their own while jobs use the last
    answer.
    """

    def __init__(self, configured: str, post: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        self._configured = configured
        self._post = post
        self._kind: LogprobKind | None = None
        self._checked_at = -math.inf
        self._lock = threading.Lock()  # guards the fields; never held while a probe runs
        self._probing = False

    @property
    def known(self) -> LogprobKind | None:
        return self._configured if self._configured in ("tempered", "original") else self._kind  # type: ignore[return-value]

    def kind(self) -> LogprobKind:
        """The current answer, without waiting; a stale or missing one starts a probe in the background."""
        if self._configured in ("tempered", "original"):
            return self._configured  # type: ignore[return-value]
        with self._lock:
            due = not self._probing and time.monotonic() - self._checked_at > RECHECK_S
            if due:
                self._probing = True
        if due:
            threading.Thread(target=self._refresh, name="guardq-logprob-probe", daemon=True).start()
        # Until a probe answers: SGLang's default, what a server runs with unless someone set the variable.
        return self._kind or "tempered"

    def probe_now(self) -> LogprobKind | None:
        """Probe in the caller's thread (the worker's start, before it takes jobs); None when inconclusive."""
        if self._configured in ("tempered", "original"):
            return self.known
        with self._lock:
            if self._probing:
                return self._kind
            self._probing = True
        self._refresh()
        return self._kind

    def _refresh(self) -> None:
        try:
            probed = self._probe()
        except Exception as exc:  # a probe must never take a job down with it
            log.warning("sglang_logprob_probe_failed", error=repr(exc))
            probed = None
        with self._lock:
            now = time.monotonic()
            # an inconclusive probe (server busy or down) is asked again sooner, but never per job
            self._checked_at = now if probed is not None else now - RECHECK_S + RETRY_S
            if probed is not None:
                if probed != self._kind:
                    log.info("sglang_logprobs_probed", kind=probed)
                self._kind = probed
            self._probing = False

    def _probe(self) -> LogprobKind | None:
        spreads = []
        for index, temperature in enumerate(PROBE_TEMPERATURES):
            payload = self._post(probe_body(temperature, f"guardq-logprob-probe-{time.time_ns()}-{index}"))
            value = spread(payload) if payload is not None else None
            if value is None:
                log.warning("sglang_logprob_probe_inconclusive", temperature=temperature)
                return None
            spreads.append(value)
        return classify(spreads[0], spreads[1])
