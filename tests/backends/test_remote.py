"""A pool of two real OpenAI-compatible servers behind one local model name: two
`python -m llama_cpp.server` processes on loopback serving the embedded GGUF (through
tests/llama_server.py, which only sets llama.cpp's extra buffers as the router does on AMX).
Balancing, losing one mid-run without a failed request, ejection and return seen in /health
and /metrics, `router models --probe`, and the cloud taking over when both are down."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from router import Router
from router.server.app import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.fakecloud import FakeCloud
from tests.server_harness import ServerThread
from tests.server_harness import health as details
from tests.test_packaging import SMOLLM2

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One llama_cpp.server process, stopped by its pid."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaServer:
        args = [
            sys.executable, str(ROOT / "tests" / "llama_server.py"), "--model", str(SMOLLM2),
            "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", "1024", "--n_threads", "1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("llama_cpp.server exited at start") from None
                time.sleep(0.3)
        raise RuntimeError("llama_cpp.server did not start in 90 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_a_pool_of_two_balances_survives_losing_one_and_falls_back_when_both_are_gone(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SMOLLM2 is not None
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    a, b = LlamaServer(free_port()), LlamaServer(free_port())
    threads = [threading.Thread(target=s.start) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        extra = (
            f'\n[models.team]\ntier = "local"\napi_base = ["{a.url}", "{b.url}"]\n'
            'remote_model = "smollm2"\nmax_score = 0.5\neject_seconds = 4\ntimeout_seconds = 60\n'
        )
        config = write_config(tmp_path, fake_cloud.base_url, extra)
        text = config.read_text().replace(
            '[models.smollm2]\ntier = "local"', '[models.smollm2]\nenabled = false\ntier = "local"'
        )
        config.write_text(text)

        probe = subprocess.run(
            [sys.executable, "-m", "router", "models", "--probe", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.count("found; serves: smollm2") == 2

        with Router(config) as router, ServerThread(create_app(router)) as server:

            def ask(text: str) -> str:
                done = router.complete(
                    [{"role": "user", "content": text}], max_tokens=8, cache=False
                )
                assert (done.routing.tier, done.routing.model) == ("local", "team"), done.routing
                assert done.routing.cost_usd == 0 and done.routing.tokens_saved > 0
                return done.text

            # Balancing: two at a time, least outstanding requests.
            def two(i: int) -> None:
                ask(f"Say a word about the number {i}.")

            workers = [threading.Thread(target=two, args=(i,)) for i in range(8)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=120)
            served = {e["url"]: e["served"] for e in router.local_runtime("team")["endpoints"]}
            assert sum(served.values()) == 8 and min(served.values()) >= 2, served

            # Losing one mid-run: no request fails while the other is up.
            answers: list[str] = []

            def run() -> None:
                for i in range(6):
                    answers.append(ask(f"Name a colour, number {i}."))

            runner = threading.Thread(target=run)
            runner.start()
            time.sleep(0.5)
            b.kill()
            runner.join(timeout=180)
            assert len(answers) == 6 and all(answers)
            ask("One more, please.")  # the next request finds b down and leaves it out
            health = details(server.url)["models"]["team"]["worker"]
            states = {e["url"]: e["state"] for e in health["endpoints"]}
            assert states == {a.url: "up", b.url: "ejected"}, health
            metrics = get(server.url + "/metrics")
            assert f'router_endpoint_up{{model="team",endpoint="{b.url}"}} 0' in metrics
            assert f'router_endpoint_up{{model="team",endpoint="{a.url}"}} 1' in metrics

            # It comes back: probed once its ejection is over, then served again.
            b.start()
            before = {e["url"]: e["served"] for e in router.local_runtime("team")["endpoints"]}
            deadline = time.monotonic() + 60
            for n in range(1, 1000):  # new conversations: each has its home endpoint
                if time.monotonic() > deadline:
                    break
                ask(f"Count to {n}.")
                back = {e["url"]: e for e in router.local_runtime("team")["endpoints"]}[b.url]
                if back["served"] > before[b.url]:
                    break
                time.sleep(0.5)
            assert back["state"] == "up" and back["served"] > before[b.url], back

            # Both down: the cloud answers (auto), and says why.
            a.kill()
            b.kill()
            done = router.complete([{"role": "user", "content": "Hello there"}], max_tokens=8)
            assert (
                done.routing.tier == "cloud"
                and "team: every endpoint failed" in done.routing.reason
            )
    finally:
        a.kill()
        b.kill()
