"""DR-Encoder stage 1 on the tiny model: statistics, restoration, determinism, data path."""

from __future__ import annotations

import dataclasses
import json

import dp_accounting
import pytest
import torch

from drencoder.codecs import ConvAutoencoderCodec, MlpAutoencoderCodec
from drencoder.config import load_config
from drencoder.errors import ConfigError
from drencoder.federated.client.stage1 import collect_client_statistics
from drencoder.federated.server import stage1 as stage1_mod
from drencoder.federated.server.stage1 import conv_stages_for
from drencoder.federated.simulator import run_stage1
from drencoder.federated.workload import build_workload
from drencoder.lora import (
    adapter_layout,
    attach_lora,
    block_kind,
    get_adapter_state,
    set_adapter_state,
    train_local,
    warmup_updates,
)
from drencoder.prior import PriorSampler
from helpers import make_tiny_llama, make_tiny_tokenizer

OVERRIDES = ["clients=2", "local.lr=0.01", "codec.train_steps=3", "eval.questions=4"]


def setup(*overrides, sent=None):
    config = load_config(preset="smoke", overrides=[*OVERRIDES, *overrides])
    model = attach_lora(make_tiny_llama(), config.lora, seed=0)
    workload = build_workload(config, make_tiny_tokenizer())
    layout = adapter_layout(model, sent=sent or config.lora.sent)
    return config, model, workload, layout


@pytest.fixture(scope="module")
def tiny():
    return setup()


def equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def batches_for(workload, *, epochs, steps=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [workload.batches(0, steps=steps, batch_size=4, generator=gen) for _ in range(epochs)]


def test_statistics_have_one_mean_and_std_per_block_per_epoch(tiny):
    config, model, workload, layout = tiny
    state = get_adapter_state(model)
    stats = collect_client_statistics(
        model, state, batches_for(workload, epochs=3), config.local, layout=layout, seed=5
    )
    assert stats.n_epochs == 3 and stats.layout == layout
    for epoch in stats.epochs:
        assert epoch.means.shape == epoch.stds.shape == (len(layout.blocks),)
        b_blocks = [i for i, b in enumerate(layout.blocks) if block_kind(b.key) == "B"]
        assert (epoch.stds[b_blocks] > 0).all()  # every lora_B moved in every epoch
    assert equal_states(get_adapter_state(model), state)  # restored for the next client


def test_epochs_continue_from_each_other(tiny):
    # Epoch e's update starts where epoch e-1 ended: the updates add up to the whole move.
    config, model, workload, layout = tiny
    state = get_adapter_state(model)
    batches = batches_for(workload, epochs=2, steps=1)
    updates = warmup_updates(model, state, batches, config.local, layout=layout, seed=0)
    assert len(updates) == 2 and all(u.shape == (layout.dim,) for u in updates)
    settings = dataclasses.replace(config.local, steps=1)
    for epoch in batches:  # dropout is 0, so the seed draws nothing: any seed reproduces it
        train_local(model, epoch, settings, seed=0)
    total = layout.flatten(get_adapter_state(model)) - layout.flatten(state)
    torch.testing.assert_close(updates[0] + updates[1], total, rtol=0, atol=1e-7)
    assert not torch.equal(updates[1], torch.zeros_like(updates[1]))
    set_adapter_state(model, state)


def test_adapter_is_restored_when_training_fails(tiny):
    config, model, workload, layout = tiny
    state = get_adapter_state(model)
    good = batches_for(workload, epochs=1)[0]
    bad = {**good[0], "labels": torch.full_like(good[0]["labels"], -100)}
    with pytest.raises(ConfigError, match="no label"):
        warmup_updates(model, state, [good, [bad]], config.local, layout=layout, seed=0)
    assert equal_states(get_adapter_state(model), state)
    with pytest.raises(ConfigError, match="at least one epoch"):
        warmup_updates(model, state, [], config.local, layout=layout, seed=0)


def test_ffa_layout_keeps_only_lora_b_statistics():
    config, model, workload, layout = setup("method=ffa-lora-dp")
    assert all(block_kind(b.key) == "B" for b in layout.blocks)
    stats = collect_client_statistics(
        model,
        get_adapter_state(model),
        batches_for(workload, epochs=1),
        config.local,
        layout=layout,
        seed=0,
    )
    assert stats.n_blocks == len(layout.blocks)


def stage1(config, model, workload, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = get_adapter_state(model)
    result = run_stage1(
        model, state, workload, config, layout=layout, generator=gen, progress=False
    )
    assert equal_states(get_adapter_state(model), state)
    return result


def test_run_stage1_is_deterministic_and_json_ready(tiny):
    config, layout = tiny[0], tiny[3]
    a, b = stage1(*tiny), stage1(*tiny)
    assert isinstance(a.codec, MlpAutoencoderCodec) and a.codec.layout == layout
    for k, v in a.codec.state_dict().items():
        assert torch.equal(v, b.codec.state_dict()[k]), k
    assert json.dumps(a.sampler.pooled.to_dict()) == json.dumps(b.sampler.pooled.to_dict())
    ra, rb = (dict(r.report, seconds=0, training_seconds=0) for r in (a, b))
    assert ra == rb
    report = json.loads(json.dumps(a.report))
    assert report["clients"] == 2 and report["epochs"] == 1
    assert report["warmup_steps"] == config.local.steps
    assert report["release"]["noise_std"] == pytest.approx(
        config.stage1.clip_norm * config.stage1.noise_multiplier
    )
    assert report["pooling"] == "mean"
    assert report["training"]["steps"] == 3
    assert report["prior_check"]["rel_error"] >= 0
    assert len(report["statistics_norms"]) == 2
    for comp in a.sampler.pooled.components:  # projected onto the clients' clip ball
        norm = float(torch.cat([comp.means, comp.stds]).double().norm())
        assert norm <= config.stage1.clip_norm * (1 + 1e-5)
    # Charged once to every client: one Gaussian event with the release's noise multiplier.
    assert a.dp_event == dp_accounting.GaussianDpEvent(config.stage1.noise_multiplier)
    c = stage1(*tiny, seed=1)
    assert not torch.equal(
        c.sampler.pooled.components[0].means, a.sampler.pooled.components[0].means
    )


def test_autoencoder_trains_on_prior_samples_only(tiny, monkeypatch):
    config = tiny[0]
    seen, samples = [], []
    real_train = stage1_mod.train_autoencoder
    real_sample = PriorSampler.sample

    def spy_train(codec, sampler, **kwargs):
        seen.append(sampler)
        return real_train(codec, sampler, **kwargs)

    def spy_sample(self, n, *, generator):
        out = real_sample(self, n, generator=generator)
        samples.append(out)
        return out

    monkeypatch.setattr(stage1_mod, "train_autoencoder", spy_train)
    monkeypatch.setattr(PriorSampler, "sample", spy_sample)
    result = stage1(*tiny)
    assert seen == [result.sampler] and type(seen[0]) is PriorSampler
    # 3 training steps plus one check batch, nothing else reaches the codec.
    assert len(samples) == config.codec.train_steps + 1


def test_release_off_is_non_private_and_unnoised():
    tiny = setup("stage1.release_noise=false", "stage1.epochs=2", "stage1.warmup_steps=1")
    result = stage1(*tiny)
    assert result.dp_event == dp_accounting.NonPrivateDpEvent()
    assert result.report["release"]["noise_std"] == 0.0
    assert result.report["epochs"] == 2 and result.report["warmup_steps"] == 1
    assert result.sampler.n_components == 2  # mean pooling: one component per epoch


def test_conv_architecture():
    result = stage1(*setup("codec.architecture=conv"))
    assert isinstance(result.codec, ConvAutoencoderCodec)
    assert result.codec.stages == 4 and result.codec.latent_channels == 4  # 1/64 · 4^4
    assert conv_stages_for(1 / 16) == 4
    assert conv_stages_for(1 / 1024) == 5  # 4^4/1024 is not whole, 4^5/1024 = 1
    with pytest.raises(ConfigError, match="compression_ratio = 0.3"):
        conv_stages_for(0.3)
