"""One read-only view of an adapter's tensors (names, dtypes, shapes), whatever file holds them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import legacy_bin
from .safetensors_io import SafetensorsFile, numel, read_header


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype name: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return numel(self.shape)


@dataclass
class WeightsFile:
    """An opened weights file: a safetensors header, or the tensors of a legacy .bin."""

    path: Path
    header: SafetensorsFile | None = None
    state: dict | None = None  # torch tensors, only for .bin

    @classmethod
    def open(cls, path: Path) -> "WeightsFile":
        if path.suffix == ".safetensors":
            return cls(path, header=read_header(path))
        return cls(path, state=legacy_bin.load_state_dict(path))

    def infos(self) -> list[TensorInfo]:
        if self.header is not None:
            return [TensorInfo(t.name, t.dtype, t.shape) for t in self.header.tensors]
        assert self.state is not None
        return [TensorInfo(k, legacy_bin.dtype_name(v), tuple(v.shape)) for k, v in self.state.items()]

    @property
    def nbytes(self) -> int:
        if self.header is not None:
            return self.header.data_size
        assert self.state is not None
        return sum(v.numel() * v.element_size() for v in self.state.values())
