"""How a local embedding request is read: its texts counted and bounded, then read in groups
of about EMBED_GROUP tokens, each a turn of the model handed out in the order asked
(`FairLock`), so that a small request queued behind a large one is answered between two
groups (router.backends.local's LocalBackend.embed)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

from router.errors import ClientGoneError, RequestError, TooLargeError

# Tokens an embedding reads in one turn of the model: ~2.5 s for the shipped model on one
# thread of a 2-core CPU, the longest a small request waits behind a large one.
EMBED_GROUP = 256


class FairLock:
    """A lock handed over in the order it was asked for. threading.Lock is not fair: a thread
    that releases it and asks again at once mostly gets it back, so a large embedding read in
    groups would keep a small request queued behind it waiting to the end."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._waiting: collections.deque[object] = collections.deque()

    def __enter__(self) -> None:
        with self._cond:
            if not self._held and not self._waiting:
                self._held = True
                return
            me = object()
            self._waiting.append(me)
            try:
                while self._held or self._waiting[0] is not me:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: leave the queue
                self._waiting.remove(me)
                self._cond.notify_all()
                raise
            self._waiting.popleft()
            self._held = True

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


def groups(counts: list[int], size: int) -> Iterator[tuple[int, int]]:
    """Consecutive ranges of texts of about `size` tokens each (a longer text alone)."""
    start, tokens = 0, 0
    for i, n in enumerate(counts):
        if i > start and tokens + n > size:
            yield start, i
            start, tokens = i, 0
        tokens += n
    if start < len(counts):
        yield start, len(counts)


def check_sizes(name: str, counts: list[int], each: int, most: int) -> None:
    """RequestError for a text of more than `each` tokens, TooLargeError (413) for texts of
    more than `most` in all: before any is read."""
    for i, n in enumerate(counts):
        if n > each:
            raise RequestError(
                f"input[{i}] has {n} tokens; {name} embeds at most {each} tokens a text (its "
                "n_ctx): shorten or split it (Ollama's /api/embed: or send "
                '"truncate": true to have it cut)',
                param="input",
            )
    total = sum(counts)
    if total > most:
        raise TooLargeError(
            f"the inputs have {total} tokens; {name} embeds at most {most} in one request "
            "(max_embedding_tokens in models.toml): send them in several requests",
            param="input",
        )


def gone(name: str, done: int, total: int, tokens: int) -> ClientGoneError:
    """The error of an embedding stopped for a hang-up: the model, and the tokens it read."""
    error = ClientGoneError(
        f"{name}: the client hung up; embedding stopped after {done} of {total} inputs "
        f"({tokens} tokens read)"
    )
    error.tokens, error.model = tokens, name
    return error
