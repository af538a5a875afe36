"""Progress where work is long (issue 16, item 9): the environment builds of scripts/demo and scripts/test say what
they build, about how long it takes and where the log is, and keep saying they are alive; long commands say each
stage in one line when stderr is not a terminal, and the model libraries' per-update bars stay out of logs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.checkpoints import write_big_peft_lora, write_peft_lora
from tests.helpers.models import make_peft_checkpoint

ROOT = Path(__file__).resolve().parent.parent
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def test_an_environment_build_says_what_how_long_and_where_the_log_is(tmp_path: Path) -> None:
    script = f"""
source {ROOT}/scripts/_env.sh
begin_build demo-env "a demonstration environment" "about 3 seconds"
logged bash -c 'echo step one; sleep 3; echo step two'
end_build
logged bash -c 'echo it broke; exit 3' || echo "status $?"
"""
    env = {**os.environ, "SWIFTREG_CACHE": str(tmp_path / "cache"), "SWIFTREG_BUILD_TICK": "1"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    err = done.stderr
    logs = list((tmp_path / "cache" / "logs").glob("demo-env-*.log"))
    assert len(logs) == 1 and "step one\nstep two\n" in logs[0].read_text()
    assert f"building a demonstration environment (about 3 seconds on a 2-core machine, once; log: {logs[0]})" in err
    assert "a demonstration environment: still building, 0m0" in err  # alive, off a terminal, every tick
    assert "built a demonstration environment in 0m" in err
    assert "it broke" in err and f"(whole log: {logs[0]})" in err and "status 3" in done.stdout


def _swiftreg(home: Path, *args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
    env.update(SWIFTREG_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "registry.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_long_commands_say_each_stage_in_one_line_off_a_terminal(tmp_path: Path, llama_base: Path) -> None:
    home = tmp_path / "home"
    pushed = _swiftreg(home, "push", write_big_peft_lora(tmp_path / "a", seed=1, megabytes=40), "team/a")
    assert pushed.returncode == 0, pushed.stderr
    assert "push: checking and hashing" in pushed.stderr and "then storing what the registry in" in pushed.stderr
    pulled = _swiftreg(home, "pull", "team/a", "--format", "swift")  # a line only if it outlasts a second
    assert pulled.returncode == 0 and all(line.startswith("pull: materialising team/a as swift from the registry in")
                                          for line in pulled.stderr.splitlines()), pulled.stderr
    small = _swiftreg(home, "push", write_peft_lora(tmp_path / "b", seed=2), "team/b")
    assert small.returncode == 0 and "push:" not in small.stderr  # a small push says nothing it need not
    adapter = tmp_path / "fits"
    make_peft_checkpoint(llama_base, adapter, {"default": LORA}, seed=2)
    merged = _swiftreg(home, "merge", adapter, "--base-model", llama_base, "-o", tmp_path / "merged",
                       "--device", "cpu")
    assert merged.returncode == 0, merged.stderr
    lines = [line for line in merged.stderr.splitlines() if line.startswith("merge: ")]
    assert [line.split(" (")[0] for line in lines] == [
        f"merge: fetching the base model {llama_base} and the adapter {adapter}",
        "merge: merging, one shard of the base at a time, each merged tensor checked",
        f"merge: writing the result to {tmp_path / 'merged'}"]  # plain LoRA: no model forward (registry/ops.py)
    assert "Loading weights" not in merged.stderr and "%|" not in merged.stderr  # no per-update bars in a log


def test_a_stage_is_said_only_when_its_work_outlasts_the_delay(capsys) -> None:
    from registry.cli.common import slow_stage

    with slow_stage("pull", "materialising team/x@3 from somewhere", after=0.05):
        time.sleep(0.5)  # a download or a conversion that takes a while
    with slow_stage("pull", "materialising team/x@4 from somewhere", after=5.0):
        pass  # a warm cache
    err = capsys.readouterr().err
    assert "pull: materialising team/x@3 from somewhere (" in err and "team/x@4" not in err
