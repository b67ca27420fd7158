"""The one error family users can cause. Imports nothing at import time, so every module can raise these.

The CLI catches :class:`LayerfilmError` only and prints its message as one line (exit 2);
any other exception is a bug and keeps its traceback.
"""


class LayerfilmError(Exception):
    """Base of every error a user can cause (bad path, bad option, unreadable checkpoint...)."""


class OptionsError(LayerfilmError):
    """An option value that cannot work (bad size, unknown extension, bad range)."""


class ScanError(LayerfilmError):
    """A checkpoint folder that is missing, empty or holds no usable checkpoint."""


class CheckpointError(LayerfilmError):
    """A checkpoint file that cannot be read safely (corrupt, truncated, unsafe pickle)."""


class RemoteCodeError(CheckpointError):
    """A checkpoint folder whose config asks to run Python code from it: layerfilm never does."""


class LayerError(LayerfilmError):
    """Parameter names that do not map to blocks, or a --param that matches nothing."""


class EncodeError(LayerfilmError):
    """The encoder (ffmpeg) failed or is missing a codec."""


class OutputError(LayerfilmError):
    """An output that cannot be written (read-only folder, full disk, no permission)."""


class EngineError(LayerfilmError):
    """Where tasks run failed: a Dask scheduler that does not answer, a worker that died."""


class StorageError(LayerfilmError):
    """Remote storage that cannot be read as layerfilm reads it (unreachable, refused, ignores Range)."""


class MissingExtra(OptionsError):
    """An optional dependency that the asked-for work needs is not installed: the message names the pip command."""


def need(module: str, extra: str, what: str, error: type[LayerfilmError] = MissingExtra) -> None:
    """Raise ``error`` naming ``pip install 'layerfilm[extra]'`` unless ``module`` can be imported (looked up
    without importing it: umap and torch take seconds to import)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise error(f"{what} needs {module}: pip install 'layerfilm[{extra}]'")
