"""The structured subspace codec and its bases (docs/codecs.md, "Structured codecs").

Small layout in the shape of LoRA: lora_A is r × in, lora_B is out × r, r = 4.
"""

from __future__ import annotations

import pytest
import torch

from drencoder.codecs import SubspaceCodec, load_codec
from drencoder.codecs.bases import allocate, bases_from_vectors, random_bases
from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout

LAYOUT = Layout.from_shapes(
    {
        "layers.0.q_proj.lora_A": (4, 48),
        "layers.0.q_proj.lora_B": (64, 4),
        "layers.0.v_proj.lora_A": (4, 48),
        "layers.0.v_proj.lora_B": (16, 4),
    }
)
D = LAYOUT.dim  # 4 * (48 + 64 + 48 + 16) = 704


def codec(latent: int = 44, seed: int = 0) -> SubspaceCodec:
    dims = allocate(LAYOUT, latent=latent)
    gen = torch.Generator().manual_seed(seed)
    return SubspaceCodec(layout=LAYOUT, bases=random_bases(LAYOUT, dims, generator=gen))


def gaussian(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_allocation_follows_the_ratio_and_the_budget():
    # d/16 = 44 latent numbers; each vector costs r = 4: 11 vectors, ~1/16 of each side.
    dims = allocate(LAYOUT, latent=44)
    assert dims == [3, 4, 3, 1]
    assert sum(a * 4 for a in dims) == 44
    # Energy weights put the vectors where the energy is: all on the second block here.
    assert allocate(LAYOUT, latent=44, weights=[0, 1, 0, 0]) == [0, 11, 0, 0]
    # A block cannot take more vectors than its side is long: the rest goes elsewhere.
    assert allocate(LAYOUT, latent=4 * 20, weights=[0, 0, 0, 1]) == [0, 0, 0, 16]


def test_encoder_rows_are_orthonormal_and_the_decoder_is_the_transpose():
    c = codec()
    eye = torch.eye(D)
    enc = c.encode(eye).T  # [k, d]: column j of encode(I) is E e_j
    assert torch.allclose(enc @ enc.T, torch.eye(c.latent_dim), atol=1e-5)
    dec = c.decode(torch.eye(c.latent_dim))  # [k, d]: row i is Dec(e_i) = Eᵀ e_i
    assert torch.allclose(dec, enc, atol=1e-6)


def test_reconstruction_is_an_orthogonal_projection():
    c, x = codec(), gaussian(6)
    y = c.decode(c.encode(x))
    assert torch.allclose(c.decode(c.encode(y)), y, atol=1e-5)  # idempotent
    assert torch.allclose(((x - y) * y).sum(1), torch.zeros(6), atol=1e-4)  # residual ⟂
    # Energy kept of an unstructured vector ≈ k/d (44/704 = 1/16).
    energy = (y.norm(dim=1) / x.norm(dim=1)) ** 2
    assert 0.03 < float(energy.mean()) < 0.1


def test_mean_then_decode_is_exact():
    c, x = codec(), gaussian(7)
    z = c.encode(x)
    assert torch.allclose(c.decode(z.mean(0)), c.decode(z).mean(0), atol=1e-6)
    assert torch.allclose(c.decode(z.mean(0)), c.decode(c.encode(x.mean(0))), atol=1e-6)


def test_a_basis_from_updates_captures_their_span_exactly():
    # Updates living in a 2-dimensional subspace of each block's long side.
    gen = torch.Generator().manual_seed(3)
    base = gaussian(2, seed=5)
    updates = torch.randn(9, 2, generator=gen) @ base
    dims = allocate(LAYOUT, latent=44)
    bases, learned = bases_from_vectors(updates, LAYOUT, dims, generator=gen)
    c = SubspaceCodec(layout=LAYOUT, bases=bases, source="test")
    # Per block, the two base rows give 2 * r = 8 side vectors: min(8, a_b) learned.
    assert learned == [3, 4, 3, 1]
    fresh = torch.randn(3, 2, generator=gen) @ base
    # Not exact for the blocks where a_b < the data's rank, but far above k/d = 1/16.
    y = c.decode(c.encode(fresh))
    energy = float(((y.norm(dim=1) / fresh.norm(dim=1)) ** 2).mean())
    assert energy > 0.5
    # With enough vectors per block the span is captured exactly.
    big = allocate(LAYOUT, latent=4 * 40, weights=[1, 1, 1, 1])
    bases, learned = bases_from_vectors(updates, LAYOUT, big, generator=gen)
    assert learned == [8, 8, 8, 8]
    c = SubspaceCodec(layout=LAYOUT, bases=bases)
    assert torch.allclose(c.decode(c.encode(fresh)), fresh, atol=1e-4)


def test_learned_share_leaves_room_for_fresh_directions():
    updates = gaussian(9, seed=5)
    dims = allocate(LAYOUT, latent=44)  # [3, 4, 3, 1]
    gen = torch.Generator().manual_seed(0)
    _, learned = bases_from_vectors(updates, LAYOUT, dims, generator=gen, learned_share=0.5)
    assert learned == [2, 2, 2, 1]  # ceil(a_b / 2)
    with pytest.raises(ConfigError, match="learned_share must be in"):
        bases_from_vectors(updates, LAYOUT, dims, generator=gen, learned_share=0)


def test_zero_vectors_fall_back_to_a_random_completion():
    dims = allocate(LAYOUT, latent=44)
    gen = torch.Generator().manual_seed(0)
    bases, learned = bases_from_vectors(torch.zeros(2, D), LAYOUT, dims, generator=gen)
    assert learned == [0, 0, 0, 0]
    SubspaceCodec(layout=LAYOUT, bases=bases)  # orthonormal, else this raises


def test_save_load_keeps_source_and_bases(tmp_path):
    c = codec()
    c.source = "history"
    loaded = load_codec(c.save(tmp_path / "c"))
    assert isinstance(loaded, SubspaceCodec) and loaded.source == "history"
    x = gaussian(2)
    assert torch.equal(loaded.encode(x), c.encode(x))


def test_bad_bases_are_refused():
    dims = allocate(LAYOUT, latent=44)
    bases = random_bases(LAYOUT, dims, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="not orthonormal"):
        SubspaceCodec(layout=LAYOUT, bases=[2 * bases[0], *bases[1:]])
    with pytest.raises(ConfigError, match=r"must have shape \[48, a\]"):
        SubspaceCodec(layout=LAYOUT, bases=[bases[1], *bases[1:]])
    with pytest.raises(ConfigError, match="one basis per layout block"):
        SubspaceCodec(layout=LAYOUT, bases=bases[:2])
    with pytest.raises(ConfigError, match="latent must be a positive integer"):
        allocate(LAYOUT, latent=0)
    with pytest.raises(ConfigError, match="raise codec.compression_ratio"):
        allocate(LAYOUT, latent=3)
