"""What to film from the activations (:class:`ActivationSpec`), and the files besides the checkpoints
that change such a film (the cache stamps them)."""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from layerfilm.errors import OptionsError
from layerfilm.io.formats import check_regular
from layerfilm.io.scan import Checkpoint, Series
from layerfilm.io.storage import local_path

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_PROBE = Path(__file__).resolve().parents[2] / "data" / "probe.txt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# every file transformers may open to build a tokenizer or a config: each must be a regular file first
MODEL_FILES = (*TOKENIZER_FILES, "config.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")


@dataclass(frozen=True)
class ActivationSpec:
    """What to film from the activations.

    model: ``package.module:make_model`` or ``file.py:make_model`` returning a torch module
           (called with the first checkpoint's path if it takes an argument); None: build from
           ``config.json`` beside the checkpoint with transformers.
    probe: a text file, or a ``.pt``/``.npy`` of token ids (1-D: cut into rows of seq_len;
           2-D: rows as given); None: the bundled text.
    points: at most this many token positions, chosen once (seeded) and tracked at every step.
    seed: seed of that choice.
    seq_len: tokens per probe sequence; None: min(128, the model's context when it states one).
    batch_size: sequences per forward pass.
    device: "auto" (cuda when available), "cpu" or "cuda".
    devices: one long-lived worker per entry, the checkpoints spread over them (layerfilm.points.
           activations.devices): CUDA devices ``("cuda:0", "cuda:1")`` (the CLI's ``--devices 0,1``), or
           ``("cpu", "cpu")``: CPU workers standing in for devices. Also a string, "0,1" or "cpu,cpu".
           Empty: with a CUDA device and several visible GPUs, all of them; else one device. It never
           changes a result (not part of the cache key).
    dtype: weights and activations dtype: float32, bfloat16 or float16.
    near_zero: |a| below this counts as near zero in the statistics.
    blocks_regex: override block detection (a regex whose first group is the block index).
    """

    model: str | None = None
    probe: str | Path | None = None
    points: int = 512
    seed: int = 0
    seq_len: int | None = None
    batch_size: int = 8
    device: str = "auto"
    devices: tuple[str, ...] | str = ()
    dtype: str = "float32"
    near_zero: float = 0.05
    blocks_regex: str | None = None

    def __post_init__(self) -> None:
        if self.points < 2:
            raise OptionsError(f"points={self.points}: need at least 2 points per block")
        if self.seq_len is not None and self.seq_len < 1:
            raise OptionsError(f"seq_len={self.seq_len}: must be 1 or more")
        if self.batch_size < 1:
            raise OptionsError(f"batch_size={self.batch_size}: must be 1 or more")
        if self.device not in DEVICES:
            raise OptionsError(f"device={self.device!r}: choose one of {', '.join(DEVICES)}")
        object.__setattr__(self, "devices", check_devices(self.devices, self.device))
        if self.dtype not in DTYPES:
            raise OptionsError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if not self.near_zero > 0:
            raise OptionsError(f"near_zero={self.near_zero}: must be positive")
        if self.model is not None and not re.fullmatch(r"[^:]+:[A-Za-z_]\w*", self.model):
            raise OptionsError(f"model={self.model!r}: expected package.module:function or file.py:function")
        if self.probe is not None and not Path(self.probe).exists():
            raise OptionsError(f"probe={self.probe}: no such file")
        if self.probe is not None:  # a FIFO would block the read forever
            check_regular(Path(self.probe), OptionsError, f"probe={self.probe}")


def check_devices(devices: tuple[str, ...] | str, device: str) -> tuple[str, ...]:
    """devices as canonical names ("cuda:N" or "cpu"), checked against device: one kind of device
    (a CPU worker and a GPU worker would not give the same bits), each GPU once."""
    given = devices if isinstance(devices, str) else ",".join(devices)
    if isinstance(devices, str):
        devices = tuple(devices.split(",")) if devices else ()
    names = []
    for d in (d.strip() for d in devices):
        index = re.fullmatch(r"(?:cuda:)?([0-9]{1,4})", d)
        if index is not None:
            d = f"cuda:{int(index.group(1))}"
        elif d != "cpu":
            raise OptionsError(f"devices={given!r}: expected GPU indices such as 0,1 (or cuda:0,cuda:1), or cpu,cpu "
                               "for CPU workers")
        names.append(d)
    kinds = {n.partition(":")[0] for n in names}
    if len(kinds) > 1:
        raise OptionsError(f"devices={given!r}: all GPUs or all cpu, not both")
    if kinds and device != "auto" and kinds != {device}:
        raise OptionsError(f"devices={given!r}: not {device} devices (device={device})")
    if kinds == {"cuda"} and len(set(names)) < len(names):
        raise OptionsError(f"devices={given!r}: each GPU at most once")
    return tuple(names)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionsError("device=cuda: no CUDA device is available to torch (use device=cpu)")
    return torch.device(name)


def model_folder(ckpt: Checkpoint) -> Path:
    """Where config.json and tokenizer files live: the checkpoint folder, or the file's folder."""
    path = local_path(ckpt.path)
    return path if path.is_dir() else path.parent


def check_model_files(folder: Path) -> None:
    """Refuse a FIFO, device or socket among the files transformers would open in ``folder`` (open()
    would block forever) before it opens any."""
    for name in MODEL_FILES:
        if (folder / name).exists():
            check_regular(folder / name)


def input_files(spec: ActivationSpec, series: Series) -> list[Path]:
    """Files besides the checkpoints whose contents change an activation film (the cache stamps them):
    the probe, the model factory's source (or layerfilm's own Llama forward), and config/tokenizer files
    beside checkpoint files."""
    files = [Path(spec.probe) if spec.probe is not None else DEFAULT_PROBE]
    if spec.model is not None:
        target = spec.model.rpartition(":")[0]
        if target.endswith(".py"):
            files.append(Path(target))
        else:
            sys.path.insert(0, str(Path.cwd()))
            try:
                found = importlib.util.find_spec(target)
            except (ImportError, ValueError):
                found = None
            finally:
                sys.path.remove(str(Path.cwd()))
            if found is not None and found.origin:
                files.append(Path(found.origin))
    else:  # the forward that runs a Llama config (layerfilm.points.activations.llama): its code changes a film
        files.append(Path(__file__).with_name("llama.py"))
    folders = {local_path(c.path).parent for c in series.checkpoints if not c.path.is_dir()}
    files += [f / n for f in sorted(folders) for n in ("config.json", *TOKENIZER_FILES) if (f / n).is_file()]
    return [f for f in files if f.is_file()]
