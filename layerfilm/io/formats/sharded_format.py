"""A Hugging Face sharded checkpoint: a folder with ``model.safetensors.index.json`` (or
``pytorch_model.bin.index.json``) whose ``weight_map`` names the shard holding each tensor,
``model-00001-of-00003.safetensors`` ... Each shard is opened lazily by its own format.

A shard must be a file beside the index: a name with a folder in it (``../../elsewhere.safetensors``,
an absolute path) is refused, as it would read outside the checkpoint folder, from a file that is not
part of the checkpoint's cache key."""

from __future__ import annotations

import json
from pathlib import PurePath

import numpy as np

from layerfilm.errors import CheckpointError
from layerfilm.io.formats.base import FORMATS, Reader, check_regular, narrow, unreadable
from layerfilm.io.storage import AnyPath

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def index_of(folder: AnyPath) -> AnyPath | None:
    return next((folder / n for n in INDEX_FILES if (folder / n).is_file()), None)


class ShardedReader:
    def __init__(self, folder: AnyPath) -> None:
        self.folder = folder
        self.index = index_of(folder)
        self.files: list[AnyPath] = []
        self.step: int | None = None
        self._where: dict[str, str] = {}
        self._shards: dict[str, Reader] = {}

    def __enter__(self) -> ShardedReader:
        assert self.index is not None  # opened only where detect() found an index
        check_regular(self.index)
        try:
            weight_map = json.loads(self.index.read_text()).get("weight_map")
        except OSError as e:
            raise unreadable(self.index, e) from None
        except (ValueError, AttributeError, RecursionError):  # RecursionError: JSON nested too deeply
            weight_map = None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{self.index}: corrupt index (no weight_map)")
        self._where = {str(k): str(v) for k, v in weight_map.items()}
        for name, shard in self._where.items():
            check_shard(self.index, name, shard)
        fmt = FORMATS.get("safetensors" if self.index.name.startswith("model.") else "torch")
        for shard in sorted(set(self._where.values())):
            path = self.folder / shard
            if not path.exists():  # a FIFO or device shard is refused by its reader
                raise CheckpointError(f"{self.folder}: shard {shard} named in {self.index.name} is missing")
            self._shards[shard] = fmt.open(path).__enter__()
            self.files.append(path)
        for name, shard in self._where.items():
            if name not in self._shards[shard].keys():
                raise CheckpointError(f"{self.folder / shard}: tensor {name} listed in the index is missing")
        return self

    def __exit__(self, *exc: object) -> None:
        for reader in self._shards.values():
            reader.__exit__(*exc)
        self._shards = {}

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shards[self._where[name]].shape(name)

    def dtype(self, name: str) -> str:
        return self._shards[self._where[name]].dtype(name)

    def get(self, name: str) -> np.ndarray:
        return self._shards[self._where[name]].get(name)

    def span(self, name: str) -> tuple[AnyPath, int, int] | None:
        span = getattr(self._shards[self._where[name]], "span", None)
        return None if span is None else span(name)

    def tensor(self, name: str):
        tensor = getattr(self._shards[self._where[name]], "tensor", None)
        return None if tensor is None else tensor(name)

    def rows(self, name: str, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        shard = self._shards[self._where[name]]
        if hasattr(shard, "rows"):
            return shard.rows(name, ids, out=out)
        got = shard.get(name)[ids]
        return got if out is None else narrow(got, out)


def check_shard(index: AnyPath, tensor: str, shard: str) -> None:
    """Refuse a ``weight_map`` value that is not the name of a file beside ``index``."""
    if shard.strip() in ("", ".", ".."):
        raise CheckpointError(f"{index}: weight_map gives tensor {tensor!r} the shard {shard!r}, which is "
                              "not a file name; name the shard file beside the index")
    if "/" in shard or "\\" in shard or PurePath(shard).is_absolute():
        raise CheckpointError(f"{index}: weight_map names shard {shard!r}, which is not a file beside the index; "
                              "layerfilm reads no shard outside the checkpoint folder or in a sub-folder")


@FORMATS.register("sharded")
class ShardedFormat:
    name = "sharded"

    @staticmethod
    def detect(path: AnyPath) -> bool:
        return path.is_dir() and index_of(path) is not None

    @staticmethod
    def open(path: AnyPath) -> ShardedReader:
        return ShardedReader(path)
