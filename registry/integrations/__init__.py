"""Plugins that let other engines use the registry directly (vLLM's LoRA resolver in `vllm.py`), and the
webhook receiver that keeps a vLLM fleet on the revisions its tags name (`vllm_fleet.py`).

Nothing here is imported by swiftreg itself: each module is loaded by its engine through an entry
point, and imports that engine only inside the functions the engine calls.
"""
