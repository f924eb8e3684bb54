"""Real-time alerts ([alerts] in models.toml): the events a team lead wants to hear of as they
happen, not when someone next runs `router audit`.

- `budget_alert` / `budget_spent`: a budget's day or month crossing `alert_at` (0.8) of a
  limit, and reaching it (checked after each paid call settles);
- `burn_rate`: the dollars paid in the last hour above `usd_per_hour` (this process's calls);
- `cloud_failing`: a cloud model failing `cloud_failures` calls in a row;
- `ledger_unwritable`: a row the ledger did not take (paid calls stop while it lasts);
- `audit_flag`: an account (a user or a team) crossing `router audit`'s `usage` rule (4× its
  peers' paid use) or its `spike` rule (a day at 4× its own daily average), the audit run
  again as paid rows land (at most once every `audit_seconds`, on the alerts' thread);
- `endpoint_ejected`: an endpoint of a local model's server pool taken out of rotation;
- `test`: `router alerts test`.

Each event (by its kind and key: the budget, period and limit; the model) is sent once a
`window_seconds`: with [shared] Redis, once across every replica (the first to claim it
sends). It is always a log line; with `webhook`, an HTTP POST retried with backoff. All of
it runs on one background thread behind a bounded queue: a request never waits for an
alert, a dead receiver included (what does not fit in the queue is counted and dropped).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from router.config.sections import AlertSettings, Budget
from router.governance.audit import Account
from router.governance.budgets import LIMITS, BudgetStore, period
from router.units import money

log = logging.getLogger("router.alerts")
MAX_QUEUED = 1000
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0)
Claim = Callable[[str, float], bool]  # (event key, window seconds) -> whether to send it
AUDIT_RULES = ("usage", "spike")  # the audit's flags that alert (router.governance.audit)


class Alerts:
    def __init__(
        self,
        settings: AlertSettings,
        claim: Claim | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._claim = claim or self._claim_here
        self._sleep = sleep
        self._claimed: dict[str, float] = {}
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=MAX_QUEUED)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing: dict[str, int] = {}
        self._spend: collections.deque[tuple[float, float]] = collections.deque()
        self._spent = 0.0
        self._audited = -float("inf")  # when the audit last ran (time.monotonic)
        self.counts = {"sent": 0, "failed": 0, "dropped": 0, "repeated": 0, "logged": 0}

    # ------------------------------------------------------------ what happened

    def emit(self, event: str, key: str, text: str, data: dict[str, Any] | None = None) -> None:
        """An event, sent once a window; never waits."""

        def job() -> None:
            self.deliver(event, key, text, data or {})

        self._submit(job)

    def settled(
        self,
        store: BudgetStore,
        scopes: tuple[str, ...],
        usd: float,
        extra: tuple[Budget, ...] = (),
    ) -> None:
        """A paid call settled on `scopes`: their budgets' shares (`extra`: those not stored,
        an API key's) are checked on the alerts' thread; its dollars count toward the burn
        rate."""
        if scopes:
            self._submit(lambda: self._check_budgets(store, scopes, extra))
        if usd > 0 and self.settings.usd_per_hour is not None:
            self._burn(usd)

    def call_failed(self, model: str, error: str) -> None:
        with self._lock:
            n = self._failing[model] = self._failing.get(model, 0) + 1
        if n == self.settings.cloud_failures:
            self.emit(
                "cloud_failing",
                model,
                f"cloud model {model} failed {n} calls in a row; the last: {error[:300]}",
                {"model": model, "failures": n},
            )

    def call_worked(self, model: str) -> None:
        if self._failing.get(model):
            with self._lock:
                self._failing.pop(model, None)

    def paid_row(self, audit: Callable[[], list[Account]]) -> None:
        """A paid answer's row landed: `audit` (the accounts and their flags, by user and by
        team) runs on the alerts' thread, at most once every `audit_seconds`."""
        if not self.settings.audit_seconds:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._audited < self.settings.audit_seconds:
                return
            self._audited = now
        self._submit(lambda: self._check_audit(audit))

    def endpoint_ejected(self, model: str, url: str, error: str, seconds: float) -> None:
        """An endpoint of `model`'s pool was ejected for `seconds` (router.backends.pool)."""
        self.emit(
            "endpoint_ejected",
            f"{model} {url}",
            f"{model}: endpoint {url} ejected for {seconds:.0f} s: {error[:300]}",
            {"model": model, "url": url, "seconds": seconds, "error": error[:300]},
        )

    def ledger_failed(self, error: str) -> None:
        self.emit(
            "ledger_unwritable",
            "ledger",
            f"the ledger cannot be written ({error[:300]}): paid calls are refused until it can",
            {"error": error[:300]},
        )

    # ------------------------------------------------------------ checks

    def _burn(self, usd: float) -> None:
        now = time.time()
        limit = self.settings.usd_per_hour or 0.0
        with self._lock:
            self._spend.append((now, usd))
            self._spent += usd
            while self._spend and self._spend[0][0] <= now - 3600:
                self._spent -= self._spend.popleft()[1]
            spent = self._spent
        if spent > limit:
            self.emit(
                "burn_rate",
                "hour",
                f"{money(spent)} paid in the last hour, over [alerts] usd_per_hour = "
                f"{money(limit)}",
                {"usd_last_hour": round(spent, 6), "usd_per_hour": limit},
            )

    def _check_budgets(
        self, store: BudgetStore, scopes: tuple[str, ...], extra: tuple[Budget, ...] = ()
    ) -> None:
        known = {**store.budgets(), **{b.scope: b for b in extra}}
        now = time.time()
        for scope in scopes:
            budget = known.get(scope)
            if budget is None:
                continue
            used = store.usage(scope, now)
            for name, kind, unit in LIMITS:
                limit = getattr(budget, name)
                if limit is None or kind == "session" or name not in used:
                    continue
                share = used[name] / limit if limit else 1.0
                if share < self.settings.alert_at:
                    continue
                key, resets = period(kind, now)
                spent = share >= 1
                amount = money if unit == "usd" else (lambda v: f"{v:,.0f} tokens")
                self.deliver(
                    "budget_spent" if spent else "budget_alert",
                    f"{scope} {name} {key}",
                    f"budget {scope} {name} is {'spent' if spent else f'{share:.0%} used'}: "
                    f"{amount(used[name])} of {amount(limit)}; it resets at "
                    f"{resets.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                    {"scope": scope, "limit": name, "used": used[name], "of": limit,
                     "share": round(share, 4), "period": key},
                )  # fmt: skip

    def _check_audit(self, audit: Callable[[], list[Account]]) -> None:
        for account in audit():
            for flag in account.flags:
                rule, _, reason = flag.partition(": ")
                if rule in AUDIT_RULES:
                    self.deliver(
                        "audit_flag",
                        f"{account.name} {rule}",
                        f"account {account.name} flagged {flag}",
                        {"account": account.name, "rule": rule, "reason": reason},
                    )

    # ------------------------------------------------------------ sending

    def deliver(self, event: str, key: str, text: str, data: dict[str, Any]) -> bool | None:
        """Send one event now, on this thread (the alerts' own, or `router alerts test`'s):
        None when it was sent already this window, else whether the webhook took it (True
        without one: the log line is the alert)."""
        if not self._claim(f"{event}:{key}", self.settings.window_seconds):
            self.counts["repeated"] += 1
            return None
        log.warning("alert %s: %s", event, text)
        self.counts["logged"] += 1
        if self.settings.webhook is None:
            return True
        at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = (
            {"text": f":rotating_light: router: {text}"}
            if self.settings.format == "slack"
            else {"event": event, "key": key, "text": text, "data": data, "at": at}
        )
        for attempt in range(self.settings.retries + 1):
            try:
                self._post(json.dumps(body).encode())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if attempt == self.settings.retries:
                    self.counts["failed"] += 1
                    log.error("alert %s could not be sent to the webhook: %s", event, exc)
                    return False
                self._sleep(BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)])
            else:
                self.counts["sent"] += 1
                return True
        return False

    def _post(self, data: bytes) -> None:
        assert self.settings.webhook is not None
        asked = urllib.request.Request(
            self.settings.webhook,
            data=data,
            headers={"Content-Type": "application/json", "User-Agent": "router-alerts"},
            method="POST",
        )
        with urllib.request.urlopen(asked, timeout=self.settings.timeout_seconds) as answer:
            answer.read(1024)

    def _claim_here(self, key: str, window: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._claimed.get(key, -window) < window:
                return False
            if len(self._claimed) > 10_000:
                self._claimed = {k: t for k, t in self._claimed.items() if now - t < window}
            self._claimed[key] = now
            return True

    def _submit(self, job: Callable[[], None]) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.counts["dropped"] += 1
            return
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="router-alerts", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # an alert's failure is logged, never a request's
                log.exception("an alert failed")
            finally:
                self._jobs.task_done()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert is handled (tests, shutdown); whether it was."""
        deadline = time.monotonic() + timeout
        while self._jobs.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._jobs.unfinished_tasks

    def close(self) -> None:
        self.flush(2.0)
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._jobs.put_nowait(None)
