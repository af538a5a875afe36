"""Tensor work on checkpoints: merge, unmerge, weighted combination, equivalence checks.

torch is imported here (never by `converters/`): the worker is where tensors are decoded.
"""
