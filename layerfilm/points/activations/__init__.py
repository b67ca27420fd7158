"""Activations as points: what each block computes on a fixed probe batch, one point per token.

The model is built once (``model``: from ``config.json``, a Llama by layerfilm's own forward in
``llama`` and any other architecture with transformers, or a user factory); each
checkpoint's weights are then loaded into it in their stored dtype (``loader``: keys matched strictly
after stripping wrapper prefixes, the next checkpoint read while the current one runs the probe);
forward hooks (``hooks``) copy each block's output hidden states at the tracked token positions of the
probe batch (``probe``); ``passes`` runs it on one device, ``devices`` spreads the checkpoints over
one long-lived worker per device. The same tokens are used at every checkpoint, so point i of every frame is
the same token: points correspond 1-to-1 across frames. ``extract`` runs the pass; ``spec`` holds the
options.

Memory is one model, one batch of hidden states, the (L, N, D) points of one key frame, and a ring of
host chunks (256 MiB, a GPU only; on the CPU, parameters stored in the model's dtype view the mapped file).
"""

from layerfilm.errors import need

need("torch", "torch", "features=activations")  # one line, not an ImportError, where torch is not installed

from layerfilm.points.activations.devices import worker_devices  # noqa: E402
from layerfilm.points.activations.extraction import extract  # noqa: E402
from layerfilm.points.activations.hooks import capture  # noqa: E402
from layerfilm.points.activations.loader import WeightLoader, match_keys  # noqa: E402
from layerfilm.points.activations.model import build_model, check_fits, default_dtype, find_blocks  # noqa: E402
from layerfilm.points.activations.probe import probe_ids, run_probe, tokenize  # noqa: E402
from layerfilm.points.activations.spec import (  # noqa: E402
           DEFAULT_PROBE,
           DEVICES,
           DTYPES,
           ActivationSpec,
           check_devices,
           input_files,
           model_folder,
           resolve_device,
)

__all__ = ["DEFAULT_PROBE", "DEVICES", "DTYPES", "ActivationSpec", "WeightLoader", "build_model", "capture", "check_fits",
           "default_dtype", "extract", "find_blocks", "input_files", "match_keys", "model_folder", "probe_ids",
           "resolve_device", "run_probe", "tokenize", "check_devices", "worker_devices"]
