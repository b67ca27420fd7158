import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from layerfilm.blocks import map_blocks, resolve_param
from layerfilm.errors import LayerError
from layerfilm.features.weights import WeightSpec, extract
from layerfilm.scan import scan

CONVENTIONS = {
    "transformer.h.{i}.": "mlp.c_fc.weight",
    "model.layers.{i}.": "mlp.up_proj.weight",
    "gpt_neox.layers.{i}.": "mlp.dense_h_to_4h.weight",
    "blocks.{i}.": "mlp.c_fc.weight",
    "layers.{i}.": "mlp.fc1.weight",
}


@pytest.mark.parametrize("pattern, mlp_in", CONVENTIONS.items())
def test_blocks_grouped_across_conventions(pattern, mlp_in):
    n = 12  # two-digit indices must sort numerically
    keys = ["embed.weight", "final_norm.weight"]
    shapes = {"embed.weight": (10, 4), "final_norm.weight": (4,)}
    for i in range(n):
        for comp, shape in ((mlp_in, (16, 4)), ("attn.o_proj.weight", (4, 4)), ("ln.weight", (4,))):
            keys.append(pattern.format(i=i) + comp)
            shapes[keys[-1]] = shape
    lm = map_blocks(keys)
    assert lm.blocks == tuple(range(n))
    assert lm.prefix + f".{n - 1}." == pattern.format(i=n - 1)
    assert resolve_param(lm, None, shapes) == mlp_in
    assert resolve_param(lm, "attn.o_proj", shapes) == "attn.o_proj.weight"
    with pytest.raises(LayerError, match="candidates: attn.o_proj.weight"):
        resolve_param(lm, "nope", shapes)


def test_blocks_regex_override():
    keys = [f"net.stage{i}.conv.weight" for i in range(3)]
    lm = map_blocks(keys, r"net\.stage(\d+)\.")
    assert lm.blocks == (0, 1, 2) and lm.components() == ["conv.weight"]
    with pytest.raises(LayerError, match="no decoder blocks"):
        map_blocks(keys)


def test_points_are_output_neurons_in_both_layouts(tiny_run, tmp_path):
    """GPT-2's Conv1D stores [in, out]: transposing every block matrix must give the same points."""
    (tmp_path / "linear").mkdir()
    (tmp_path / "conv1d").mkdir()
    for f in sorted(tiny_run.glob("*.safetensors"))[:3]:
        state = load_file(str(f))
        save_file(state, str(tmp_path / "linear" / f.name))
        conv = {k: (np.ascontiguousarray(v.T) if v.ndim == 2 and ".h." in k else v) for k, v in state.items()}
        save_file(conv, str(tmp_path / "conv1d" / f.name))
    spec = WeightSpec(points=50, seed=3)
    a = extract(scan(tmp_path / "linear"), spec, tmp_path / "wa", progress=False)
    b = extract(scan(tmp_path / "conv1d"), spec, tmp_path / "wb", progress=False)
    assert "rows" in a.name and "columns" in b.name
    np.testing.assert_array_equal(a.point_ids, b.point_ids)
    for t in range(3):
        np.testing.assert_array_equal(a.store[t], b.store[t])
    # the points are rows of c_fc [4d, d] = output neurons: D is the input width
    assert a.store[0].shape == (4, 50, 32)
    w = load_file(str(sorted(tiny_run.glob("*.safetensors"))[0]))["transformer.h.2.mlp.c_fc.weight"]
    np.testing.assert_array_equal(a.store[0][2], w[a.point_ids[2]])
