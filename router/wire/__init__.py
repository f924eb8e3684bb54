"""The OpenAI wire format: the one place JSON meets the router's types.

- `body`    bytes → JSON with limits (depth, integer size, valid Unicode), before anything else
- `schema`  the OpenAI chat request as pydantic models: every content form, every parameter
- `http`    a request body → ChatCall, and router errors → OpenAI error bodies with a status

This package's `__init__` imports nothing, so `router.types` can use `schema` without a cycle.
"""
