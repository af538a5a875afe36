"""Llama-shaped bases and LoRA adapters made from random numbers on any device, written as a Hugging Face folder.

The GPU check (bench/gpu.py, tests/test_gpu.py) needs a 7B-parameter base without downloading one: building the
transformers model would initialise 7 billion parameters on the host, so the tensors are drawn straight on the
device, shard by shard, with Llama's key names, and saved as safetensors shards with an index, beside a
config.json transformers loads. The same code at tiny sizes runs on the CPU (`scripts/gpu-check --cpu`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

#: the linear layers of a Llama block: every one gets a LoRA
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """A Llama's sizes, and how its checkpoint is cut into shards."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    shard_bytes: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensors(self, layers: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """Every weight of the model in save order: (name, shape)."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers if layers is None else layers):
            p = f"model.layers.{n}."
            out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                    (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                    (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                    (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                    (p + "mlp.down_proj.weight", (h, i))]
        return out + [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    def parameters(self) -> int:
        total = 0
        for _, shape in self.tensors():
            count = 1
            for d in shape:
                count *= d
            total += count
        return total

    def linear_modules(self, layers: int | None = None) -> list[tuple[str, int, int]]:
        """(module path, out, in) of every linear layer a LoRA targets."""
        out = []
        for name, shape in self.tensors(layers):
            stem = name.removesuffix(".weight")
            if stem.rsplit(".", 1)[-1] in TARGETS:
                out.append((stem, shape[0], shape[1]))
        return out


#: Llama-2-7B's sizes (6.74 billion parameters, 13.5 GB in bf16), in shards of at most 2 GiB
SEVEN_B = Shape("7B", hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000,
                shard_bytes=2 * 2**30)
#: the same code on the CPU in a second: 4 shards
TINY = Shape("tiny", hidden=64, intermediate=160, layers=2, heads=4, kv_heads=2, vocab=256, shard_bytes=48 * 1024)


def _draw(shape: tuple[int, ...], name: str, generator: torch.Generator, device: torch.device,
          dtype: torch.dtype) -> torch.Tensor:
    if len(shape) == 1:  # RMSNorm weights: near one
        return (1 + 0.05 * torch.randn(shape, generator=generator, device=device)).to(dtype)
    return (0.02 * torch.randn(shape, generator=generator, device=device)).to(dtype)


def write_config(folder: Path, shape: Shape, dtype: torch.dtype, layers: int | None = None) -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers if layers is None else layers,
                         num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=False, rms_norm_eps=1e-5)
    config.save_pretrained(folder)
    path = folder / "config.json"
    data = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    data["architectures"] = ["LlamaForCausalLM"]
    for key in ("torch_dtype", "dtype"):
        data[key] = name
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_base(folder: Path, shape: Shape, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
               seed: int = 0, layers: int | None = None) -> Path:
    """Write a random Llama-shaped base to `folder` in shards of at most `shape.shard_bytes`; returns folder.
    The tensors are drawn on `device` (the GPU draws 7B in seconds) and copied to the host one shard at a time."""
    device = torch.device(device)
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder, shape, dtype, layers)
    size = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, dims in shape.tensors(layers):
        nbytes = size
        for d in dims:
            nbytes *= d
        if shards[-1] and used + nbytes > shape.shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append((name, dims))
        used += nbytes
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for n, members in enumerate(shards, 1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _draw(dims, name, generator, device, dtype).to("cpu") for name, dims in members}
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update((name, file) for name in tensors)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder


def build_lora(folder: Path, shape: Shape, *, rank: int = 16, alpha: int = 32, seed: int = 1,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, layers: int | None = None,
               base_name: str = "", b_std: float = 0.01, skip: tuple[str, ...] = ()) -> Path:
    """Write a PEFT LoRA (rank `rank`, every linear layer of the first `layers` blocks) with random A and B
    (B nonzero, so the merge changes every targeted weight). `skip`: modules left out (a wrong merge, in tests)."""
    from peft import LoraConfig

    device = torch.device(device)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module, rows, cols in shape.linear_modules(layers):
        key = f"base_model.model.{module}"
        a = torch.randn((rank, cols), generator=generator, device=device) / cols ** 0.5
        b = b_std * torch.randn((rows, rank), generator=generator, device=device)
        if module in skip:
            continue
        tensors[key + ".lora_A.weight"] = a.to(dtype).to("cpu")
        tensors[key + ".lora_B.weight"] = b.to(dtype).to("cpu")
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), task_type="CAUSAL_LM",
               base_model_name_or_path=base_name or None).save_pretrained(str(folder))
    return folder
