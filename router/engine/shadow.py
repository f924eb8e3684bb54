"""Shadow judging ([quality] in models.toml): was the local answer good enough?

For a sampled share (`shadow_rate`) of freshly answered requests, after the client has its
answer, a background thread gets the other tier's answer to the same messages and asks the
judge model which of the two serves the user better, in both orders (position bias cancels,
as in MT-Bench's pairwise judging). Both sides of the ceiling are sampled:

- answered locally: the cloud answers too; was the local answer acceptable?
- answered by the cloud: the local model with the highest ceiling answers too (only when it is
  idle: shadow work never queues in front of a user); would it have done?

The judge answers a JSON schema (`response_format`), so any OpenAI-compatible model can judge
and nothing is parsed by guessing. The local answer is *unacceptable* when the judge prefers
the other one in both orders, *acceptable* otherwise (a tie, or votes that flip with the order,
count as a tie). Verdicts, the judge, each order's vote and the shadow calls' cost land on the
request's ledger row. Shadow spend is the router's own: never in the row's cost, never on a
user's budget, and it stops for the UTC day at `max_usd_per_day` (checked against the worst
case before each job). A failing judge or shadow call costs the request nothing: the answer is
long delivered; the job is counted as failed and its row keeps no verdict.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.backends import Backend
from router.config import Config, Price
from router.engine.policy import ModelView, estimate_prompt_tokens, worst_prompt_tokens
from router.errors import BackendError, RouterError
from router.ledger import Ledger, Verdict
from router.types import ChatRequest, Routing, sample

log = logging.getLogger("router.shadow")

QUEUE = 16  # jobs waiting; more are dropped (counted), never a wait for the client
JUDGE_TOKENS = 32
SHOWN_CHARS = 6000  # of the question and of each answer, in the judge's prompt

SCHEMA: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"better": {"type": "string", "enum": ["A", "B", "tie"]}},
            "required": ["better"],
            "additionalProperties": False,
        },
    },
}
SYSTEM = (
    "You compare two AI assistants' answers to the same user request and decide whether one "
    "serves the user clearly better. Judge correctness first, then helpfulness; ignore length "
    "and style unless they matter to the request. Reply with JSON only."
)


def judge_messages(question: str, a: str, b: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": (
                f"[User request]\n{sample(question, SHOWN_CHARS)}\n\n"
                f"[Answer A]\n{sample(a, SHOWN_CHARS)}\n\n[Answer B]\n{sample(b, SHOWN_CHARS)}\n\n"
                'Which answer serves the user better? "better": "A", "B", or "tie" when both '
                "are about equally good or the difference would not matter to the user."
            ),
        },
    ]


def local_outcome(better: str, local_is_a: bool) -> str:
    """The local answer's outcome in one order: win, tie or lose."""
    if better == "tie":
        return "tie"
    return "win" if (better == "A") == local_is_a else "lose"


def combine(outcomes: list[str]) -> str:
    """Unacceptable only when the judge prefers the other answer in both orders."""
    return "unacceptable" if all(o == "lose" for o in outcomes) else "acceptable"


def _text(response: Mapping[str, Any]) -> str:
    content = response["choices"][0]["message"].get("content")
    return content if isinstance(content, str) else ""


@dataclass(frozen=True)
class Job:
    request: ChatRequest
    routing: Routing
    answer: str


class Shadow:
    """The background judge (see the module docstring). `offer` never blocks."""

    def __init__(
        self,
        config: Config,
        backend: Callable[[str], Backend],
        views: Callable[[], dict[str, ModelView]],
        ledger: Ledger,
        prices: Mapping[str, Price],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = config.quality
        self._config = config
        self._backend = backend
        self._views = views
        self._ledger = ledger
        self._prices = prices
        self._rng = rng or random.Random()
        self._queue: queue.Queue[Job | None] = queue.Queue(QUEUE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._busy = False
        self.counts: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.settings.shadow_rate > 0 and self.settings.judge is not None

    def offer(self, request: ChatRequest, routing: Routing, answer: str) -> None:
        """Maybe judge this answer, later (sampled at shadow_rate; tools and empty answers are
        not judged)."""
        if not self.enabled or request.needs_tools or not answer.strip():
            return
        if self._rng.random() >= self.settings.shadow_rate:
            return
        with self._lock:
            self.counts["sampled"] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(Job(request, routing, answer))
        except queue.Full:
            self._count("dropped")

    def wait(self, timeout: float) -> bool:
        """Wait until every offered job is done (tests, and close); False on timeout."""
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            with self._lock:
                if self._queue.empty() and not self._busy:
                    return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 3.0) -> None:
        """Let the job in progress finish (up to `timeout`), drop the rest (a job cut short
        leaves no verdict; what it paid is on the ledger already)."""
        if self._thread is None:
            return
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] += 1

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._busy = True
            try:
                self._count(self._judge(job))
            except Exception:  # a bug here must never reach a user: log it and go on
                log.exception("shadow judging failed")
                self._count("failed")
            finally:
                with self._lock:
                    self._busy = False

    def _other(self, job: Job) -> tuple[str | None, str]:
        """The other tier's model for this request, or None and why not (no usable model, or
        the local one is busy with users)."""
        views = [v for v in self._views().values() if v.unusable is None]
        need = estimate_prompt_tokens(job.request) + self.settings.max_tokens
        if job.routing.tier == "local":
            cloud = [v.name for v in views if v.tier == "cloud" and not v.embeddings]
            return (cloud[0], "") if cloud else (None, "no-other-model")
        local = sorted(
            (
                v
                for v in views
                if v.tier == "local" and not v.embeddings and (v.n_ctx is None or need <= v.n_ctx)
            ),
            key=lambda v: -v.max_score,
        )
        if not local:
            return None, "no-other-model"
        health = getattr(self._backend(local[0].name), "health", None)
        if callable(health) and health().get("in_flight", 0) > 0:
            return None, "local-busy"
        return local[0].name, ""

    def _worst_usd(self, job: Job, other: str, judge: str) -> float:
        prompt = worst_prompt_tokens(job.request)
        answer_tokens = self.settings.max_tokens
        judge_prompt = prompt + 2 * max(answer_tokens, len(job.answer.encode()) // 2) + 200
        return self._prices[other].cost(prompt, answer_tokens) + 2 * self._prices[judge].cost(
            judge_prompt, JUDGE_TOKENS
        )

    def _cost(self, name: str, response: Mapping[str, Any]) -> float:
        usage = response.get("usage") or {}
        return self._prices[name].cost(
            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        )

    def _answer(
        self, name: str, request: ChatRequest, params: dict[str, Any]
    ) -> tuple[str | None, float]:
        """The other model's answer and its cost. A local model is streamed and given up (None)
        as soon as a user's request waits for it."""
        backend = self._backend(name)
        if self._config.models[name].tier == "cloud":
            response = backend.complete(request, params)
            return _text(response), self._cost(name, response)
        health = getattr(backend, "health", None)
        parts: list[str] = []
        chunks = backend.stream(request, params)
        try:
            for chunk in chunks:
                for choice in chunk.get("choices", []):
                    parts.append(choice.get("delta", {}).get("content") or "")
                if callable(health) and health().get("in_flight", 0) > 1:
                    return None, 0.0
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return "".join(parts), 0.0

    def _judge(self, job: Job) -> str:
        judge = self.settings.judge
        assert judge is not None
        other, why_not = self._other(job)
        if other is None:
            return why_not
        now = time.time()
        day = now - now % 86400  # UTC midnight
        cap = self.settings.max_usd_per_day
        if self._ledger.shadow_spend(day) + self._worst_usd(job, other, judge) > cap:
            return "capped"
        params = {"max_tokens": self.settings.max_tokens}
        spent = 0.0  # the judge's calls; the other answer's cost is recorded when paid
        try:
            other_answer, cost = self._answer(other, job.request, params)
            if cost:  # recorded at once: what was paid counts towards the cap whatever follows
                self._ledger.judged(job.routing.response_id, Verdict("", judge, other, "", cost))
            if other_answer is None:
                return "local-busy"  # a user came: the local model is theirs
            local_answer, cloud_answer = (
                (job.answer, other_answer)
                if job.routing.tier == "local"
                else (other_answer, job.answer)
            )
            question = job.request.last_user_text
            outcomes = []
            for local_is_a in (True, False):
                a, b = (local_answer, cloud_answer) if local_is_a else (cloud_answer, local_answer)
                asked = ChatRequest(judge_messages(question, a, b))
                verdict = self._backend(judge).complete(
                    asked, {"max_tokens": JUDGE_TOKENS, "temperature": 0, "response_format": SCHEMA}
                )
                spent += self._cost(judge, verdict)
                better = json.loads(_text(verdict)).get("better")
                if better not in ("A", "B", "tie"):
                    raise ValueError(f"the judge answered outside the schema: {better!r}")
                outcomes.append(local_outcome(better, local_is_a))
        except (BackendError, RouterError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("shadow judging of %s failed: %s", job.routing.response_id, exc)
            if spent:  # what was paid before the failure is still the router's spend
                self._ledger.judged(job.routing.response_id, Verdict("", judge, other, "", spent))
            return "failed"
        local_model = other if job.routing.tier == "cloud" else job.routing.model
        verdict_ = Verdict(combine(outcomes), judge, other, ",".join(outcomes), spent)
        self._ledger.judged(job.routing.response_id, verdict_)
        log.info("shadow verdict on %s (%s): %s", job.routing.response_id, local_model, verdict_)
        return "judged"
