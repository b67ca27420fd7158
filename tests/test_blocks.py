"""Blocks (layerfilm.io.blocks): parameters grouped into decoder blocks across naming conventions, the
regex override, the filmed matrix and its points (output neurons, whatever the storage layout)."""

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from layerfilm.errors import LayerError
from layerfilm.film_options import FilmOptions
from layerfilm.io.blocks import map_blocks, resolve_param
from layerfilm.io.scan import scan
from layerfilm.points.weights import WeightSpec
from layerfilm.study import Study

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
    a = Study(scan(tmp_path / "linear"), FilmOptions(weights=spec, cache=False), progress=False).points()
    b = Study(scan(tmp_path / "conv1d"), FilmOptions(weights=spec, cache=False), progress=False).points()
    assert "rows" in a.name and "columns" in b.name
    np.testing.assert_array_equal(a.point_ids, b.point_ids)
    for t in range(3):
        np.testing.assert_array_equal(a.store[t], b.store[t])
    # the points are rows of c_fc [4d, d] = output neurons: D is the input width
    assert a.store[0].shape == (4, 50, 32)
    w = load_file(str(sorted(tiny_run.glob("*.safetensors"))[0]))["transformer.h.2.mlp.c_fc.weight"]
    np.testing.assert_array_equal(a.store[0][2], w[a.point_ids[2]])


def test_pytorch_transformer_layers_film_linear1_without_param(lightning_encoder, tmp_path, run_cli):
    """A real Lightning checkpoint of nn.TransformerEncoder layers: blocks `encoder.layers.N.`, the
    default filmed matrix is linear1 (the same film as --param linear1), in_proj_weight reachable as
    --param self_attn.in_proj."""
    from layerfilm.points.weights import plan

    series = scan(lightning_encoder, warn=False)
    assert series.steps == [3, 6, 9]
    wp = plan(series, WeightSpec())
    assert wp.component == "linear1.weight" and wp.shape == (48, 16) and not wp.transpose
    assert wp.layer_map.blocks == (0, 1, 2) and wp.tensor_names[0].endswith("encoder.layers.0.linear1.weight")
    args = ("--size", "320x192", "--fps", "1", "--points", "20", "--jobs", "1", "--quiet")
    code, _, err = run_cli("render", lightning_encoder, "--out", tmp_path / "a.webm", "--export-points", tmp_path / "a.npz",
                           *args)
    assert code == 0, err
    code, _, err = run_cli("render", lightning_encoder, "--out", tmp_path / "b.webm", "--export-points", tmp_path / "b.npz",
                           "--param", "linear1", *args)
    assert code == 0, err
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["xy"].shape == (3, 3, 20, 2)
    np.testing.assert_array_equal(a["xy"], b["xy"])
    assert plan(series, WeightSpec(param="self_attn.in_proj")).component == "self_attn.in_proj_weight"
    code, out, err = run_cli("scan", lightning_encoder, "--deep")
    assert code == 0 and "3 usable, 0 skipped" in err, err


def test_one_mlp_like_pair_is_filmed_under_any_names():
    """Unknown names: the up matrix [h, d] of the block's one up/down pair ([h, d] and [d, h]) is the
    default; two such pairs (or none) leave the choice to --param."""
    def blocks(comps):
        keys = [f"net.blocks.{i}.{c}" for i in range(2) for c in comps]
        return map_blocks(keys), {k: comps[k.split(".", 3)[3]] for k in keys}

    lm, shapes = blocks({"mix.q.weight": (8, 8), "mix.out.weight": (8, 8), "grow.weight": (24, 8), "shrink.weight": (8, 24),
                         "norm.weight": (8,)})
    assert resolve_param(lm, None, shapes) == "grow.weight"
    lm, shapes = blocks({"mix.q.weight": (8, 8), "shrink.weight": (8, 24), "grow.weight": (24, 8), "a.weight": (16, 8),
                         "b.weight": (8, 16)})
    with pytest.raises(LayerError, match="nor as one up/down pair of matrices; pass --param, one of: a.weight"):
        resolve_param(lm, None, shapes)
    lm, shapes = blocks({"mix.q.weight": (8, 8), "proj.weight": (24, 8)})
    with pytest.raises(LayerError, match="pass --param"):
        resolve_param(lm, None, shapes)
