"""`python -m llama_cpp.server` (llama-cpp-python's own OpenAI-compatible server), started with
llama.cpp's extra weight buffers set as the router's worker sets them: on AMX builds they crash
every multi-token decode (llama.cpp issue 20824) and llama_cpp.server has no switch for them.

    python tests/llama_server.py --model PATH --port N [any llama_cpp.server option]

Used by tests/backends/test_remote.py to stand in for the servers a team runs (llama-server,
Ollama, vLLM). Nothing else changes: the server, its API and its model loading are the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import llama_cpp.llama_cpp as c_api
    from llama_cpp.server.__main__ import main as serve

    from router.backends.llama_process import extra_buffers_choice, system_info

    enabled, _why = extra_buffers_choice("auto", system_info())
    defaults = c_api.llama_model_default_params

    def params():  # type: ignore[no-untyped-def]
        p = defaults()
        p.use_extra_bufts = enabled
        return p

    c_api.llama_model_default_params = params
    serve()


if __name__ == "__main__":
    main()
