"""Helpers the tests share (not tests, not fixtures): small checkpoints, tiny models, real servers.

checkpoints   adapter checkpoints written directly, no model needed
databases     SQLite always, PostgreSQL when configured: the per-database params and fresh PostgreSQL databases
models        tiny real architectures built from configs, and how to run them
seeded        a registry seeded like a small team's (validate-all, Ray, bench/validate.py)
server        a real `swiftreg serve` subprocess, and the environment its CLI calls run in
http          the /api/v1 wire protocol spoken with raw httpx (push, upload, error shape, raw sockets)
vllm_server   a real vLLM OpenAI server with swiftreg's resolver plugin
swift_greedy  a script run inside ms-swift's environment (greedy tokens for the vLLM tier)

Fixtures live in tests/conftest.py.
"""
