"""The tensor layouts of the converter, against layouts written out by hand.

megatron's fused QKV is interleaved per query group, its SwiGLU fc1 is [gate; up], and its
vocabulary is padded. Each test builds the megatron tensor row by row from a
label that says which HF head/row it is, so a wrong reshape cannot pass.
"""

from __future__ import annotations

import pytest
import torch

from nextlat_pt.convert import llama_mapping as lm
from nextlat_pt.convert.safetensors_writer import TensorGroup, parse_size, plan_shards


def _labelled_qkv(heads: int, groups: int, head_dim: int, hidden: int):
    """megatron's fused QKV where each row holds (kind, head, row-in-head) in its first 3
    columns; kind 0/1/2 = q/k/v. Built group by group, as megatron lays it out."""
    per_group = heads // groups
    rows = []
    for g in range(groups):
        for j in range(per_group):
            rows += [(0, g * per_group + j, r) for r in range(head_dim)]
        rows += [(1, g, r) for r in range(head_dim)]
        rows += [(2, g, r) for r in range(head_dim)]
    fused = torch.zeros(len(rows), hidden)
    fused[:, :3] = torch.tensor(rows, dtype=torch.float32)
    return fused


@pytest.mark.parametrize("heads,groups", [(4, 4), (4, 2), (8, 1), (6, 3)])
def test_split_qkv_puts_every_head_where_hf_expects_it(heads, groups):
    head_dim, hidden = 3, 8
    q, k, v = lm.split_qkv(_labelled_qkv(heads, groups, head_dim, hidden), heads, groups,
                           head_dim)
    assert q.shape == (heads * head_dim, hidden) and k.shape == (groups * head_dim, hidden)
    for kind, tensor, count in ((0, q, heads), (1, k, groups), (2, v, groups)):
        expected = torch.tensor([(kind, h, r) for h in range(count) for r in range(head_dim)],
                                dtype=torch.float32)
        assert torch.equal(tensor[:, :3], expected)


def test_fuse_qkv_inverts_split_and_rejects_wrong_sizes():
    fused = torch.randn((4 + 2 * 2) * 5, 16)
    q, k, v = lm.split_qkv(fused, 4, 2, 5)
    assert torch.equal(lm.fuse_qkv(q, k, v, 4, 2, 5), fused)
    with pytest.raises(ValueError, match="expected"):
        lm.split_qkv(fused, 4, 4, 5)  # read as MHA: the sizes do not add up


def test_fc1_is_gate_then_up():
    gate, up = torch.full((6, 4), 1.0), torch.full((6, 4), 2.0)
    fused = lm.fuse_fc1(gate, up)
    assert torch.equal(fused[:6], gate) and torch.equal(fused[6:], up)
    g, u = lm.split_fc1(fused)
    assert torch.equal(g, gate) and torch.equal(u, up)


def test_vocab_padding_round_trip():
    weight = torch.randn(100, 8)
    padded = lm.pad_vocab(weight, 128)
    assert padded.shape == (128, 8) and torch.count_nonzero(padded[100:]) == 0
    assert torch.equal(lm.unpad_vocab(padded, 100), weight)
    with pytest.raises(ValueError):
        lm.unpad_vocab(weight, 101)
    with pytest.raises(ValueError):
        lm.pad_vocab(weight, 99)


def test_layer_maps_are_inverse():
    heads, groups, head_dim, d, ffn = 4, 2, 4, 16, 24
    ours = {
        "input_norm": torch.randn(d), "mlp_norm": torch.randn(d),
        "qkv": torch.randn((heads + 2 * groups) * head_dim, d), "proj": torch.randn(d, d),
        "fc1": torch.randn(2 * ffn, d), "fc2": torch.randn(d, ffn),
    }
    hf = lm.megatron_layer_to_hf(3, ours, heads, groups, head_dim)
    assert set(hf) == set(lm.hf_layer_names(3).values())
    back = lm.hf_layer_to_megatron(3, hf, heads, groups, head_dim)
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def test_shards_respect_the_size_limit_and_keep_order():
    groups = [TensorGroup(f"g{i}", size, dict) for i, size in enumerate([5, 5, 5, 12, 1, 1])]
    shards = plan_shards(groups, 10)
    assert [[g.name for g in s] for s in shards] == [["g0", "g1"], ["g2"], ["g3"],
                                                     ["g4", "g5"]]
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20
    assert parse_size("1234") == 1234
