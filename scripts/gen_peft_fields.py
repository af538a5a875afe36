"""Regenerate converters/data/peft_config_fields.json from the real PEFT releases.

For each PEFT minor release, record every field of LoraConfig and ShiraConfig with its default,
read from the installed package itself. The converter uses the table to write a config an older
PEFT can load (`--peft-version`): a field that release does not know is dropped only when it holds
the default value.

    python scripts/gen_peft_fields.py            # needs network access to the package index
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RELEASES = ["0.18.0", "0.19.1", "0.20.0", "0.21.2"]
# An older peft may not import beside the newest transformers: name other interpreters to try.
INTERPRETERS = [sys.executable] + [p for p in os.environ.get("GEN_PEFT_PYTHONS", "").split(os.pathsep) if p]
OUT = Path(__file__).resolve().parent.parent / "converters" / "data" / "peft_config_fields.json"

DUMP = r"""
import dataclasses, json, sys, enum
import peft
out = {}
for cls_name in ("LoraConfig", "ShiraConfig"):
    cls = getattr(peft, cls_name, None)
    if cls is None:
        continue
    fields = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        if isinstance(value, enum.Enum):
            value = value.value
        try:
            json.dumps(value)
        except TypeError:
            value = repr(value)
        fields[f.name] = value
    out[cls_name] = fields
print(json.dumps({"version": peft.__version__, "configs": out}))
"""


def main() -> None:
    table: dict[str, dict] = {}
    for release in RELEASES:
        with tempfile.TemporaryDirectory() as target:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, f"peft=={release}"],
                check=True,
            )
            env = dict(os.environ, PYTHONPATH=target)
            for interpreter in INTERPRETERS:
                done = subprocess.run([interpreter, "-c", DUMP], capture_output=True, text=True, env=env)
                if done.returncode == 0:
                    dumped = done.stdout
                    break
            else:
                raise SystemExit(f"peft {release} imports with none of {INTERPRETERS}:\n{done.stderr[-2000:]}")
        record = json.loads(dumped.strip().splitlines()[-1])
        minor = ".".join(record["version"].split(".")[:2])
        table[minor] = {"release": record["version"], **record["configs"]}
        print(f"peft {record['version']}: {len(record['configs'].get('LoraConfig', {}))} LoraConfig fields")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
