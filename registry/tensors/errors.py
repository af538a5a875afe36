"""The worker's refusals, part of the registry's error tree (registry/errors.py).

    RegistryError
    └── WorkerError                 tensor work refused: the message names the module, file or tensor
        ├── AdapterError            an adapter folder that cannot be used (layout, keys, factors)
        ├── ShapeMismatchError      an adapter made for another base model (module and shapes named)
        ├── NonFiniteError          NaN or Inf in a result (--safe), module named
        └── NotInvertibleError      an unmerge the merged weights alone cannot undo (DoRA, replaced tensors)
"""
from __future__ import annotations

from ..errors import RegistryError


class WorkerError(RegistryError, ValueError):
    """Base class of the worker's refusals."""


class AdapterError(WorkerError):
    """The adapter folder cannot be used for tensor work."""


class ShapeMismatchError(WorkerError):
    """The adapter does not fit the base model."""


class NonFiniteError(WorkerError):
    """A merged or combined tensor holds NaN or Inf."""


class NotInvertibleError(WorkerError):
    """What merge did cannot be undone from the merged weights alone."""
