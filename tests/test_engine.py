"""The engine's hand-written pieces against the ops they replace (exact equality where they claim it).

The end-to-end contracts (tokens, log-probs within 1e-5 of a scoring pass) are in
tests/test_rollout.py and tests/test_sampler.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from warmstart.engine import _Decoder, _rms_norm
from warmstart.models import load_policy
from warmstart.models.toy import save_toy


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_policy(save_toy(tmp_path_factory.mktemp("toy") / "xs", "xs", seed=0)).model


def test_rms_norm_equals_f_rms_norm_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    for rows, width in ((64, 128), (975, 96), (1, 32)):
        h = torch.randn(rows, width, generator=gen) * 3
        w = torch.randn(width, generator=gen)
        ref = F.rms_norm(h, (width,), w, 1e-6)
        assert torch.equal(_rms_norm(h, w, 1e-6, float(width)), ref)
        assert torch.equal(_rms_norm(h, w, torch.tensor(1e-6), torch.tensor(float(width))), ref)


def test_packed_weights_are_the_model_linears(model):
    """q/k/v, gate/up and the LM head are stored input-major: x @ W_T is each nn.Linear's output."""
    decoder = _Decoder(model, suppress_ids=[])
    layer, hf = decoder.layers[0], model.model.language_model.layers[0]
    x = torch.randn(5, decoder.hidden)
    with torch.no_grad():
        qkv = torch.cat([hf.self_attn.q_proj(x), hf.self_attn.k_proj(x), hf.self_attn.v_proj(x)], dim=-1)
        gate_up = torch.cat([hf.mlp.gate_proj(x), hf.mlp.up_proj(x)], dim=-1)
        assert torch.allclose(torch.addmm(layer.b_qkv, x, layer.w_qkv_T), qkv, atol=1e-6, rtol=0)
        assert torch.allclose(x @ layer.w_gate_up_T, gate_up, atol=1e-6, rtol=0)
        assert torch.allclose(decoder.head(x), model.lm_head(x), atol=1e-6, rtol=0)


def test_gated_in_place_equals_act_gate_times_up(model):
    """The MLP's silu(gate) * up computed in a reused buffer equals the plain ops exactly."""
    decoder = _Decoder(model, suppress_ids=[])
    assert decoder.silu
    layer = decoder.layers[1]
    x = torch.randn(7, decoder.hidden)
    gate, up = (x @ layer.w_gate_up_T).chunk(2, dim=-1)
    buffer = torch.full((7, layer.w_gate_up_T.shape[1]), float("nan"))
    for _ in range(2):  # the buffer's old contents do not matter
        assert torch.equal(decoder.gated(x, layer, buffer), F.silu(gate) * up)
    assert torch.equal(decoder.gated(x, layer, None), F.silu(gate) * up)


def test_gated_keeps_an_unknown_activation_out_of_place(model):
    """Another activation than silu is applied as the module's own forward, never in place."""
    other = copy.deepcopy(model)
    for layer in other.model.language_model.layers:
        layer.mlp.act_fn = torch.nn.GELU()
    decoder = _Decoder(other, suppress_ids=[])
    assert not decoder.silu
    layer = decoder.layers[0]
    x = torch.randn(3, decoder.hidden)
    gate, up = (x @ layer.w_gate_up_T).chunk(2, dim=-1)
    buffer = torch.empty(3, layer.w_gate_up_T.shape[1])
    assert torch.equal(decoder.gated(x, layer, buffer), F.gelu(gate) * up)


def test_vision_indices_precomputed_give_the_towers_own_features(model):
    """The vision tower given its index tensors precomputed (cached per set of grids) returns
    exactly what it computes itself, for two different sets of grids (one image of several
    attention windows) and on a repeat."""
    from warmstart import engine

    decoder = _Decoder(model, suppress_ids=[])
    vlm = model.model
    gen = torch.Generator().manual_seed(0)
    patch = vlm.visual.patch_size
    per_patch = 3 * vlm.visual.config.temporal_patch_size * patch * patch
    for grids in ([[1, 4, 4], [1, 4, 4]], [[1, 4, 4], [1, 16, 8], [1, 4, 8]], [[1, 4, 4], [1, 4, 4]]):
        grid = torch.tensor(grids)
        pixels = torch.randn(int(grid.prod(-1).sum()), per_patch, generator=gen)
        assert engine._vision_indices(vlm.visual, grid)  # this transformers takes them precomputed
        with torch.no_grad():
            own = torch.cat(list(vlm.get_image_features(pixels, grid, return_dict=True).pooler_output))
            ours = decoder.image_embeddings(pixels, grid, own.dtype)
        assert torch.equal(ours, own)
