"""Endpoints serving one model, and which one gets the next request.

Least outstanding requests: the endpoint answering the fewest requests now gets the next one
(ties go round the pool). A request of a conversation (`affinity`: its session, or its first
messages) goes where that conversation went before, so the server's prompt cache still holds
its prefix (llama-server, Ollama and vLLM each keep one), unless that endpoint has more than one
request in flight above the least loaded (rendezvous hashing with a bounded load: an endpoint
that leaves moves only its own conversations).

An endpoint that cannot be reached or times out is ejected at once; one that answers 5xx or 429
is ejected after `eject_after` such answers in a row (one bad request is weak evidence: Envoy's
outlier detection waits for 5). Ejected, it is left out for `eject_seconds`, doubled each time
it is ejected again in a row (at most 10 minutes). When that time is up it is probed (`GET
<api_base>/models`, a few seconds at most) before it gets requests again; a failed probe ejects
it again. A request that succeeds on it resets both counts. Either way the failed request itself
goes on to the next endpoint.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_EJECTION_SECONDS = 600.0


@dataclass
class Endpoint:
    url: str
    in_flight: int = 0
    served: int = 0
    failures: int = 0  # in all
    ejections: int = 0  # in a row, since the last success
    strikes: int = 0  # 5xx/429 answers in a row, since the last success or ejection
    ejected_until: float = 0.0
    last_error: str | None = None

    def state(self, now: float) -> str:
        if self.ejections == 0:
            return "up"
        return "ejected" if now < self.ejected_until else "probing"


class Pool:
    def __init__(
        self,
        urls: list[str],
        *,
        eject_seconds: float,
        eject_after: int = 1,
        probe: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = [Endpoint(url) for url in urls]
        self._eject_seconds = eject_seconds
        self._eject_after = eject_after
        self._probe = probe  # raises when the endpoint does not answer
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0
        # Told of each ejection: (url, why, seconds out); the router's alerts (endpoint_ejected).
        self.on_eject: Callable[[str, str, float], None] | None = None

    def acquire(self, tried: set[str], affinity: str | None = None) -> Endpoint | None:
        """The endpoint for the next attempt (its request counted), or None when every
        endpoint not yet `tried` is ejected or fails its probe; `affinity`: the
        conversation. Endpoints whose ejection is over are probed: in the background while
        another endpoint can take the request, or first (a few seconds at most) when none
        can."""
        while True:
            with self._lock:
                now = self._clock()
                due = [
                    e for e in self.endpoints if e.url not in tried and e.state(now) == "probing"
                ]
                for e in due:  # held out of every caller's choice until its probe answers
                    e.ejected_until = now + self._eject_seconds
                up = [e for e in self.endpoints if e.url not in tried and e.state(now) == "up"]
                chosen = None
                if up:
                    start = self._turn % len(self.endpoints)
                    self._turn += 1
                    order = self.endpoints[start:] + self.endpoints[:start]
                    chosen = min(up, key=lambda e: (e.in_flight, order.index(e)))
                    if affinity is not None:
                        home = max(up, key=lambda e: _weight(affinity, e.url))
                        if home.in_flight <= chosen.in_flight + 1:
                            chosen = home
                    chosen.in_flight += 1
            if chosen is not None:
                for e in due:
                    threading.Thread(target=self._check, args=(e,), daemon=True).start()
                return chosen
            if not due:
                return None
            for e in due:  # nothing else can take the request: it waits for the probes
                self._check(e)

    def _check(self, endpoint: Endpoint) -> None:
        """Probe an endpoint whose ejection is over: back in, or out again for longer."""
        try:
            self._probe(endpoint.url)
        except Exception as exc:  # any failure to answer the probe
            self.failed(endpoint, f"probe failed: {_short(exc)}", counted=False)
            return
        with self._lock:
            endpoint.ejections = 0  # back in; a failure now starts the doubling over
            endpoint.ejected_until = 0.0
            endpoint.last_error = None

    def succeeded(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.in_flight = max(0, endpoint.in_flight - 1)
            endpoint.served += 1
            endpoint.ejections = 0
            endpoint.strikes = 0
            endpoint.ejected_until = 0.0

    def released(self, endpoint: Endpoint) -> None:
        """The request ended without saying anything about the endpoint's health (a 4xx)."""
        with self._lock:
            endpoint.in_flight = max(0, endpoint.in_flight - 1)

    def failed(
        self, endpoint: Endpoint, error: str, *, counted: bool = True, at_once: bool = True
    ) -> None:
        """Eject `endpoint` for a while: `at_once` (it could not be reached), or on the
        `eject_after`th failure in a row (an error answer); `counted`: a request was in flight
        on it."""
        with self._lock:
            if counted:
                endpoint.in_flight = max(0, endpoint.in_flight - 1)
            endpoint.failures += 1
            endpoint.last_error = error
            if not at_once:
                endpoint.strikes += 1
                if endpoint.strikes < self._eject_after:
                    return
            endpoint.strikes = 0
            endpoint.ejections += 1
            wait = min(self._eject_seconds * 2 ** (endpoint.ejections - 1), MAX_EJECTION_SECONDS)
            endpoint.ejected_until = self._clock() + wait
        if self.on_eject is not None:  # (out of the lock: an alert never holds the pool)
            self.on_eject(endpoint.url, error, wait)

    def seconds_until_usable(self) -> float | None:
        """0 when an endpoint can take a request now, else when the first one is probed."""
        with self._lock:
            now = self._clock()
            if any(e.state(now) != "ejected" for e in self.endpoints):
                return 0.0
            return max(0.0, min(e.ejected_until for e in self.endpoints) - now)

    def health(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self._clock()
            return [
                {
                    "url": e.url,
                    "state": e.state(now),
                    "in_flight": e.in_flight,
                    "served": e.served,
                    "failures": e.failures,
                    "failures_in_a_row": e.strikes,
                    "ejected_for_seconds": round(max(0.0, e.ejected_until - now), 1)
                    if e.state(now) == "ejected"
                    else 0.0,
                    "last_error": e.last_error,
                }
                for e in self.endpoints
            ]


def _weight(affinity: str, url: str) -> int:
    """Rendezvous hashing: the endpoint of highest weight is a conversation's home."""
    digest = hashlib.blake2b(f"{affinity}\0{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
