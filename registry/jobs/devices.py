"""The devices a `swiftreg worker` declares: `--device cuda:0`, or found at its start.

A worker names the one device it computes on (one worker per GPU is the pattern on a multi-GPU machine), and
the queue hands a job that needs CUDA only to a worker that declared one (registry/jobs/queue.py). Finding
the device must not cost a torch import on a machine that plainly has no GPU (workers start often, in tests
and in fleets): without an NVIDIA or AMD device node there is no CUDA for torch to see, so the answer is the
CPU at once; otherwise torch is asked.
"""
from __future__ import annotations

import os

#: device nodes whose absence proves torch can see no GPU (NVIDIA's control node, AMD's ROCm node)
GPU_NODES: tuple[str, ...] = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def gpu_node_present() -> bool:
    """Whether any GPU device node exists (a cheap first look before importing torch)."""
    return any(os.path.exists(node) for node in GPU_NODES)


def worker_device(option: str = "auto") -> str:
    """The device a worker computes on, from its `--device` option: "auto" (the current CUDA device when torch
    sees one, else "cpu"), "cpu", "cuda" or "cuda:N". Asking for CUDA where torch sees none is a DeviceError
    naming what was asked and what to use instead, never a silent fallback to the CPU."""
    name = option.strip().lower()
    if name == "cpu" or (name == "auto" and not gpu_node_present()):
        return "cpu"
    from ..tensors.device import pick_device

    device = pick_device(name)
    if device.type == "cuda" and device.index is None:
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return str(device)
