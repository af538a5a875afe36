"""ms-swift pushes what it just trained to a real `swiftreg serve` through its own Hugging Face push
(`use_hf`), in its own environment, with nothing but the environment pointing it at the registry.

One ms-swift process (importing ms-swift costs seconds): a tiny Llama built from a config gets a Swift
LoRA, a transformers Trainer runs three steps and writes `checkpoint-3` the way ms-swift's trainers do
(the tuner's own `save_pretrained`, plus the optimizer, scheduler and RNG pickles), and
`swift.hub.get_hub(use_hf=True).push_to_hub` (what `swift export --push_to_hub true --use_hf true`
calls: huggingface_hub's create_repo and upload_folder) pushes it with HF_ENDPOINT, HF_TOKEN and
HF_HUB_DISABLE_XET=1. The same process then loads the revision back by id through its ModelScope path
(MODELSCOPE_ENDPOINT) and compares logits with the model it trained.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from registry.service import Registry
from tests.helpers.models import PROBE
from tests.helpers.server import running_server

pytestmark = [pytest.mark.hubpush, pytest.mark.hubs, pytest.mark.server, pytest.mark.oracle]

REPO = "team/trained-lora"

TRAIN_AND_PUSH = '''
import json, sys, torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from swift.hub import get_hub
from swift.tuners import LoRAConfig, Swift

torch.set_num_threads(1)
base, out_dir, repo, probe = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
torch.manual_seed(0)

def fresh():
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager").eval()

def logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor(probe)).logits

class Batches(torch.utils.data.Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        ids = torch.tensor(probe[i % len(probe)])
        return {"input_ids": ids, "labels": ids}

class SwiftTrainer(Trainer):
    def _save(self, output_dir=None, state_dict=None):  # as ms-swift's trainers save: the tuner's own format
        self.model.save_pretrained(output_dir)

model = Swift.prepare_model(fresh(), {"default": LoRAConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])})
args = TrainingArguments(output_dir=out_dir, max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2,
                         save_strategy="steps", save_steps=3, report_to=[], use_cpu=True, dataloader_num_workers=0,
                         disable_tqdm=True)
SwiftTrainer(model=model, args=args, train_dataset=Batches()).train()
trained = logits(model.eval())
result = {"base_moved": (trained - logits(fresh())).abs().max().item()}

get_hub(use_hf=True).push_to_hub(repo, out_dir + "/checkpoint-3", commit_message="3 steps")
try:  # ms-swift calls create_repo without exist_ok: a second push into the repository stops there (README says so)
    get_hub(use_hf=True).push_to_hub(repo, out_dir + "/checkpoint-3")
    result["second_push"] = "pushed"
except Exception as exc:
    result["second_push"] = f"{type(exc).__name__} {getattr(getattr(exc, 'response', None), 'status_code', None)}"

loaded = Swift.from_pretrained(fresh(), repo, revision="master")  # ms-swift's own download path (ModelScope)
result["loaded_kind"] = type(loaded).__name__
result["max_diff"] = (logits(loaded.eval()) - trained).abs().max().item()
print("@@" + json.dumps(result))
'''


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ms_swift_push_to_hub_use_hf_pushes_the_checkpoint_it_trained(
        tmp_path: Path, llama_base: Path, swift_python: str) -> None:
    script = tmp_path / "train_and_push.py"
    script.write_text(TRAIN_AND_PUSH)
    with running_server(tmp_path / "home", f"sqlite:///{tmp_path / 'r.db'}") as server:
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("MODELSCOPE", "SWIFTREG_", "HF_", "USE_HF", "TRANSFORMERS_OFFLINE"))}
        env = {**clean, "HOME": str(tmp_path / "client-home"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
               # the README's "Push from training code" variables, on the LFS path (Xet has its own tests)
               "HF_ENDPOINT": server.url, "HF_TOKEN": server.write_token, "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(tmp_path / "hf-home"),
               # and for loading it back through ms-swift's ModelScope path
               "MODELSCOPE_ENDPOINT": server.url, "MODELSCOPE_API_TOKEN": server.read_token,
               "MODELSCOPE_CACHE": str(tmp_path / "ms-cache")}
        done = subprocess.run([swift_python, str(script), str(llama_base), str(tmp_path / "out"), REPO,
                               json.dumps(PROBE)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-5000:]
        result = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1][2:])
        reg = Registry(home=server.home, database_url=server.database_url)
        try:
            [revision] = reg.log(REPO)
            stored = reg.resolve(f"{REPO}@1", "swift")
        finally:
            reg.close()
        checkpoint = tmp_path / "out" / "checkpoint-3"
        assert revision.format == "swift" and revision.author == "tests", revision
        for name in ("default/adapter_model.safetensors", "default/adapter_config.json"):
            assert _sha(stored / name) == _sha(checkpoint / name), name
        # The trainer's pickles are left out, and the revision says so.
        pickles = {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
        assert pickles <= {p.name for p in checkpoint.iterdir()}
        assert pickles <= set(revision.meta["left_out"]), revision.meta
        assert not any((stored / p).exists() for p in pickles)
    assert result["base_moved"] > 1e-4, "three training steps must change the output"
    assert result["loaded_kind"] == "PeftModel" and result["max_diff"] == 0.0, result
    assert result["second_push"] == "HfHubHTTPError 409", result
