"""Exact-match response cache.

`ResponseCache` is the seam (get/set/close); `DiskResponseCache` is the embedded default over
diskcache (SQLite + files, safe across threads and processes). A shared engine such as Redis
can implement the same three methods later. The key covers everything that changes the answer:
the messages, the requested model or mode, the sampling parameters, and the routing
configuration with each model's resolved endpoint and file (`routing_fingerprint`).

`CachePolicy` decides what is read and written: a request that asks for randomness (a
temperature or top_p above 0 and no seed) is "sampled"; `[cache] sampled = "skip"` (the
default) answers it fresh every time, "reuse" serves it from the cache like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from router.chunks import new_id
from router.config import CloudModel, Config, LocalModel
from router.reachability import Reachability
from router.types import ChatRequest, Decision, Routing

if TYPE_CHECKING:
    from router.governance.waste import RepeatDetector

# 3: the key covers a passed-through request's own body and headers, and entries name the
# paid call (its ledger row) that produced them; an entry of an older router, which may hold
# an answer a request body supplied (issue 34), is never read.
KEY_VERSION = 3


class ResponseCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def cache_key(
    request: ChatRequest,
    params: dict[str, Any],
    routing_fingerprint: str,
    *,
    per_user: bool = False,
) -> str:
    """sha256 over messages, requested model, sampling params and the routing configuration
    (a changed models.toml must not serve answers chosen under the old one); `per_user`: and
    the user ([cache] scope = "user")."""
    fields: dict[str, Any] = {
        "v": KEY_VERSION,
        "model": request.model,
        "messages": request.messages,
        "params": params,
        "routing": routing_fingerprint,
    }
    if request.native is not None:  # what a model speaking the API gets besides (thinking...)
        fields["native"] = [request.native.body, request.native.headers]
    if per_user:
        fields["user"] = request.user
    payload = json.dumps(
        fields,
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class DiskResponseCache:
    """diskcache on local disk, shared by the processes of one machine (a server, its CLI),
    with the entries this process read or wrote also kept in memory, as LiteLLM's DualCache
    does: a hit then costs a dict lookup and an unpickle, not a SQLite read (a twentieth of a
    hit). At most FRONT_BYTES in memory, entries up to FRONT_ENTRY bytes each, each until its
    own expiry; another process's entries are read from disk. An entry the disk evicted for
    space can still be answered from memory until it expires: the same answer."""

    FRONT_BYTES, FRONT_ENTRY = 8 * 1024 * 1024, 256 * 1024

    def __init__(self, directory: Path, *, ttl_seconds: int, size_limit_mb: int) -> None:
        import diskcache

        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._cache = diskcache.Cache(str(directory), size_limit=size_limit_mb * 1024 * 1024)
        self._ttl = ttl_seconds or None
        self._front: dict[str, tuple[float | None, bytes]] = {}  # key: (expires, pickled)
        self._front_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        known = self._front.get(key)
        if known is not None:
            expires, blob = known
            if expires is None or expires > time.time():
                value = pickle.loads(blob)  # a fresh copy, as a read from disk gives
                return value if isinstance(value, dict) else None
            with self._lock:
                self._forget(key)
        value, expires = self._cache.get(key, expire_time=True)
        if not isinstance(value, dict):
            return None
        self._remember(key, value, expires)
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._cache.set(key, value, expire=self._ttl)
        self._remember(key, value, time.time() + self._ttl if self._ttl else None)

    def _remember(self, key: str, value: dict[str, Any], expires: float | None) -> None:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        if len(blob) > self.FRONT_ENTRY:
            return
        with self._lock:
            self._forget(key)
            while self._front and self._front_bytes + len(blob) > self.FRONT_BYTES:
                _, (_, dropped) = _oldest(self._front)  # the first remembered goes first
                self._front_bytes -= len(dropped)
            self._front[key] = (expires, blob)
            self._front_bytes += len(blob)

    def _forget(self, key: str) -> None:
        old = self._front.pop(key, None)
        self._front_bytes -= len(old[1]) if old else 0

    def __len__(self) -> int:
        """Entries stored (expired ones included until they are evicted)."""
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()


def _oldest(front: dict[str, Any]) -> tuple[str, Any]:
    key = next(iter(front))
    return key, front.pop(key)


def routing_fingerprint(
    config: Config, local_paths: dict[str, Path | None], estimator: str = ""
) -> str:
    """The enabled models' settings, where each one is reached now (a cloud model's resolved
    api_base: OPENAI_BASE_URL pointed elsewhere must not replay the old server's answers),
    which file a local model loads (its path, size and modification time), and the estimator
    that scores requests (another one routes them elsewhere)."""
    models: dict[str, Any] = {"(estimator)": estimator}
    for name, m in config.enabled().items():
        entry = m.model_dump(mode="json")
        if isinstance(m, CloudModel):
            entry["resolved_api_base"] = m.resolved_api_base()
        elif isinstance(m, LocalModel) and (path := local_paths.get(name)) is not None:
            try:
                st = os.stat(path)
                entry["file"] = [str(path), st.st_size, st.st_mtime_ns]
            except OSError:
                entry["file"] = [str(path)]
        models[name] = entry
    return hashlib.sha256(json.dumps(models, sort_keys=True).encode()).hexdigest()


def sampled(params: dict[str, Any]) -> bool:
    """Whether the request asks for a random answer: a temperature or top_p above 0 given
    explicitly, and no seed to make it reproducible."""
    if params.get("seed") is not None:
        return False
    temperature, top_p = params.get("temperature"), params.get("top_p")
    return bool((temperature is not None and temperature > 0) or (top_p is not None and top_p < 1))


def answered(entry: Any) -> dict[str, Any] | None:
    """A cache entry that a model call produced (it names the call's ledger row), else None:
    anything else is never served."""
    if (
        isinstance(entry, dict)
        and isinstance(entry.get("response"), dict)
        and isinstance(entry.get("row"), str)
        and entry["row"]
        and entry.get("tier") in ("local", "cloud")
        and isinstance(entry.get("model"), str)
    ):
        return entry
    return None


@dataclass(frozen=True)
class Lookup:
    """What the cache said of a request (Router.look_up): its key, the entry (None: a miss or
    no cache), whether answering it again repeats earlier answers, and when it was asked."""

    key: str
    hit: dict[str, Any] | None
    repeated: bool
    started: float


class CachePolicy:
    """What the pipeline reads from and writes to the response cache."""

    def __init__(
        self,
        cache: ResponseCache | None,
        on_sampled: Literal["skip", "reuse"] = "skip",
        *,
        per_user: bool = False,
    ) -> None:
        self.cache = cache
        self.on_sampled = on_sampled
        self.per_user = per_user  # [cache] scope = "user": each user their own answers
        # Best effort: a cache that cannot be read or written (a full disk, a broken file)
        # costs hits, never an answer; /health says so (`health`), the log says when.
        where = str(getattr(cache, "directory", None) or type(cache).__name__)
        self.writes = Reachability("the response cache (writes)", where)
        self.reads = Reachability("the response cache (reads)", where)

    def health(self) -> dict[str, Any]:
        """`up`: its last read and its last write worked; the failures and the last one."""
        reads, writes = self.reads.state(), self.writes.state()
        last = writes["last_error"] if not writes["up"] else reads["last_error"]
        return {
            "kind": type(self.cache).__name__ if self.cache else None,
            "up": reads["up"] and writes["up"],
            "errors": reads["errors"] + writes["errors"],
            "write_failures": writes["errors"],
            "read_failures": reads["errors"],
            "last_error": last if not (reads["up"] and writes["up"]) else None,
            "down_since": writes["down_since"] or reads["down_since"],
        }

    def _read(self, cache: ResponseCache, key: str) -> dict[str, Any] | None:
        try:
            found = cache.get(key)
        except Exception as exc:  # a miss: the request goes to a model
            self.reads.failed(exc)
            return None
        self.reads.ok()
        return found

    @property
    def local(self) -> bool:
        """Whether the cache lives on this machine (a file, or none): reading it cannot wait
        on a network, so the server reads it on its event loop (router.server.service)."""
        return self.cache is None or isinstance(self.cache, DiskResponseCache)

    def applies(self, request: ChatRequest) -> bool:
        if self.cache is None or not request.cache:
            return False
        return self.on_sampled == "reuse" or not sampled(request.params)

    def get(self, request: ChatRequest, key: str) -> dict[str, Any] | None:
        cache = self.cache
        if cache is None or not self.applies(request):
            return None
        return answered(self._read(cache, key))

    def lookup(
        self, request: ChatRequest, key: str, repeats: RepeatDetector
    ) -> tuple[dict[str, Any] | None, bool]:
        """The cached answer to `request` (None: none, or the cache does not apply), and
        whether answering it again repeats earlier answers (a sampled request never does): one
        round trip when both live on Redis (router.shared.cache)."""
        check = not sampled(request.params)
        cache = self.cache
        if cache is None or not self.applies(request):
            return None, check and repeats.repeated(request.user, key)
        counting = getattr(cache, "get_counting", None)
        if check and counting is not None:
            hit, repeated = counting(key, repeats, request.user)
            return answered(hit), bool(repeated)
        hit = self._read(cache, key)
        return answered(hit), check and repeats.repeated(request.user, key)

    def reads_async(self, request: ChatRequest) -> bool:
        """Whether `alookup` can read this request's entry without blocking (Redis)."""
        return (
            self.cache is not None
            and self.applies(request)
            and hasattr(self.cache, "aget_counting")
        )

    async def alookup(
        self, request: ChatRequest, key: str, repeats: RepeatDetector
    ) -> tuple[dict[str, Any] | None, bool]:
        """`lookup` on an event loop, for a request that `reads_async`."""
        hit, repeated = await self.cache.aget_counting(key, repeats, request.user)  # type: ignore[union-attr]
        return answered(hit), bool(repeated) and not sampled(request.params)

    def set(
        self, request: ChatRequest, key: str, response: dict[str, Any], routing: Routing
    ) -> None:
        # A fallback answer (the chosen model failed, or a budget kept the request local) is
        # not what this request gets in normal times: serving it to everyone from the cache
        # would spread one user's degraded answer.
        if (
            self.cache is not None
            and self.applies(request)
            and not routing.attempts
            and not routing.cache_hit
            and routing.response_id
        ):
            # `row`: the ledger row of the model call that produced it (its id is the
            # answer's): only what a model answered is cached, and a hit says which call.
            entry = {
                "response": response,
                "tier": routing.tier,
                "model": routing.model,
                "row": routing.response_id,
            }
            try:
                self.cache.set(key, entry)
            except Exception as exc:  # best effort: a full or broken cache costs no answer
                self.writes.failed(exc)
                return
            self.writes.ok()

    @staticmethod
    def replay(hit: dict[str, Any], decision: Decision) -> tuple[dict[str, Any], Routing]:
        """A cached answer as a new response (fresh id and time) and its routing."""
        # Every read gives a fresh entry (unpickled, or parsed from Redis): nothing to copy.
        response = {**hit["response"], "id": new_id(), "created": int(time.time())}
        routing = Routing(
            tier=hit["tier"],
            model=hit["model"],
            score=decision.score,
            reason=f"cache hit (first answered by {hit['model']})",
            cache_hit=True,
            category=decision.category,
            flags=list(decision.flags),
        )
        # Which paid call answered first: the operator's to read (another user's answer id,
        # with a shared cache), never a client's.
        routing.note(f"; first answer {hit['row']}", "")
        return response, routing

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


class Sizing:
    """A request's complexity score and task category by its cache key, which covers what
    both read (the messages, the estimator): a repeated request, a cache hit most of all, is
    not scored and classified again (about a fifth of a hit's time). At most `size` keys, the
    oldest forgotten first."""

    def __init__(self, size: int = 4096) -> None:
        self._known: dict[str, tuple[float, str]] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[float, str] | None:
        return self._known.get(key)

    def put(self, key: str, sized: tuple[float, str]) -> None:
        with self._lock:
            if len(self._known) >= self._size:
                del self._known[next(iter(self._known))]
            self._known[key] = sized
