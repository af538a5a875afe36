"""Tensor maths on checkpoints: merge, unmerge, weighted combination, equivalence checks.

torch is imported here (never by `converters/`): this is where tensors are decoded. The registry
operations that run this maths on registry revisions live beside the service in `registry/ops.py`;
`swiftreg worker` (registry/jobs/) is the process that runs jobs, a different thing.
"""
