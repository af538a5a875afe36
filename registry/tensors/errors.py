"""The tensor code's refusals, part of the registry's error tree (registry/errors.py).

    RegistryError
    └── TensorError                 400 tensor_error      tensor work refused (module, file or tensor named)
        ├── AdapterError            400 unusable_adapter  an adapter folder that cannot be used (layout, keys)
        ├── ShapeMismatchError      400 shape_mismatch    an adapter for another base model (module named)
        ├── NonFiniteError          400 non_finite        NaN or Inf in a result (--safe), module named
        ├── NotInvertibleError      400 not_invertible    an unmerge the merged weights alone cannot undo
        ├── DeviceError             400 device_error      a device or dtype name the tensor code cannot use
        ├── MergeError              400 merge_error       a merge (or unmerge) that cannot be done as asked
        │   ├── MergeOutputError    400 merge_output      the destination folder cannot be written as asked
        │   └── MergeCheckError     400 merge_check       a merged tensor outside its rounding bound (tensor named)
        └── CombineError            400 combine_error     a weighted combination that cannot be done as asked

No torch here: a client rebuilding one of these from a server's answer imports only this module.
"""
from __future__ import annotations

from ..errors import RegistryError


class TensorError(RegistryError, ValueError, code="tensor_error"):
    """Base class of the tensor code's refusals."""


class AdapterError(TensorError, code="unusable_adapter"):
    """The adapter folder cannot be used for tensor work."""


class ShapeMismatchError(TensorError, code="shape_mismatch"):
    """The adapter does not fit the base model."""


class NonFiniteError(TensorError, code="non_finite"):
    """A merged or combined tensor holds NaN or Inf."""


class NotInvertibleError(TensorError, code="not_invertible"):
    """What merge did cannot be undone from the merged weights alone."""


class DeviceError(TensorError, code="device_error"):
    """A device or dtype name the tensor code cannot use (the message lists what it can)."""


class MergeError(TensorError, code="merge_error"):
    """The merge (or unmerge) cannot be done as asked; the message names the module or file."""


class MergeOutputError(MergeError, code="merge_output"):
    """The destination folder cannot be written as asked."""


class MergeCheckError(MergeError, code="merge_check"):
    """A merged tensor is not base + delta within its storage dtype's rounding (tensor_check.py); nothing written."""


class CombineError(TensorError, code="combine_error"):
    """A weighted combination that cannot be done as asked; the message says why and what to do."""
