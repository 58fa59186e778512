"""Per-example gradients of the LoRA matrices from one forward and backward pass.

Record-level DP-SGD clips every example's gradient on its own, so it needs the gradient
of each example's loss, not only their sum. For a linear layer ``y = x Wᵀ`` applied to
an example's tokens, the gradient of that example's loss with respect to ``W`` is
``Σ_t g_t x_tᵀ`` over its tokens, where ``x_t`` is the layer's input and ``g_t`` the
gradient of the loss at the layer's output. PEFT's LoRA matrices are ``torch.nn.Linear``
layers (``lora_A``, ``lora_B``) applied to ``[batch, tokens, features]`` inputs, so one
forward pass that keeps each LoRA layer's input and one backward pass that catches the
gradient at its output give every example's gradient with one batched product per layer
(the method Opacus uses for ``nn.Linear``). This works with any module that calls the
LoRA layers: the full PEFT model and the prefix-cached top alike.

Why hooks and not ``torch.func.vmap(grad(...))``: a vmapped functional call has to trace
the whole model one example at a time, and the prefix cache reads token ids as Python
values (``tolist``) to look its states up, which vmap cannot trace. The hooks need no
change to the model and no dependency beyond torch.

Each example's loss is the mean of its own labelled tokens' losses. The model's batch
loss is the mean over all labelled tokens of the batch (one per example with the letters
or answer loss), so the gradient caught at a layer's output for example j is scaled by
``N / n_j`` (``N`` labelled tokens in the batch, ``n_j`` in example j) to make it the
gradient of example j's own loss. Tests compare the result with one backward pass per
example.

The examples of a batch must not interact (no batch normalisation; padding masked),
which holds for decoder-only transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from drencoder.errors import ConfigError
from drencoder.lora.adapter import trainable_parameters
from drencoder.lora.layout import Layout
from drencoder.lora.training import batch_loss


class _Capture:
    """Hooks on the trainable LoRA ``Linear`` layers; per-example weight gradients."""

    def __init__(self, model: torch.nn.Module) -> None:
        params = trainable_parameters(model)
        by_id = {id(p): key for key, p in params.items()}
        self.modules: dict[torch.nn.Module, str] = {}
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear) and id(weight) in by_id:
                if module.bias is not None and module.bias.requires_grad:
                    raise ConfigError(
                        "per-example gradients cover LoRA weight matrices only; this "
                        "adapter trains a bias (lora bias must be 'none')"
                    )
                self.modules[module] = by_id[id(weight)]
        missing = sorted(set(params) - set(self.modules.values()))
        if missing:
            raise ConfigError(
                f"per-example gradients need every trainable LoRA matrix inside a "
                f"torch.nn.Linear layer; {missing[:3]} are not (LoRA on embeddings or "
                "convolutions is not supported with privacy.unit = record)"
            )
        self.params = params
        self.grads: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _forward_hook(self, module, inputs, output) -> None:
        if not (torch.is_grad_enabled() and output.requires_grad):
            return
        x = inputs[0].detach()
        key = self.modules[module]

        def backward_hook(g: torch.Tensor) -> None:
            if x.ndim < 2 or g.shape[0] != x.shape[0]:
                raise ConfigError(
                    f"LoRA layer {key} saw inputs of shape {tuple(x.shape)}; per-example "
                    "gradients need the batch as the first dimension"
                )
            b = x.shape[0]
            xs = x.reshape(b, -1, x.shape[-1]).float()
            gs = g.detach().reshape(b, -1, g.shape[-1]).float()
            grad = torch.bmm(gs.transpose(1, 2), xs)  # [b, out, in], as weight [out, in]
            self.grads[key] = self.grads[key] + grad if key in self.grads else grad

        output.register_hook(backward_hook)

    @contextlib.contextmanager
    def attached(self) -> Iterator[_Capture]:
        try:
            for module in self.modules:
                self._handles.append(module.register_forward_hook(self._forward_hook))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()


def example_weights(labels: torch.Tensor) -> torch.Tensor:
    """``N / n_j`` per example: labelled tokens of the batch over those of example j."""
    counts = (labels[:, 1:] != -100).sum(1).double()
    if bool((counts == 0).any()):
        raise ConfigError("an example has no labelled token; drop it before training")
    return counts.sum() / counts


def per_example_gradients(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, layout: Layout
) -> tuple[torch.Tensor, float]:
    """``([batch, layout.dim] float32, mean loss)``: each example's gradient of its own loss.

    ``batch`` is a prepared training batch (tensors on the model's device); ``layout``
    orders the trainable LoRA matrices (its keys must be exactly the trainable ones).
    Parameter ``.grad`` fields are left cleared.
    """
    capture = _Capture(model)
    if set(layout.keys) != set(capture.params):
        raise ConfigError(
            f"the layout's blocks {sorted(layout.keys)[:2]}… are not the model's trainable "
            f"LoRA matrices {sorted(capture.params)[:2]}…"
        )
    for p in capture.params.values():
        p.grad = None
    with capture.attached():
        loss = batch_loss(model, batch)
        if not torch.isfinite(loss):
            from drencoder.lora.training import TrainingError

            raise TrainingError(f"the training loss is {loss.item()}; lower the learning rate")
        loss.backward()
    for p in capture.params.values():
        p.grad = None
    weights = example_weights(batch["labels"]).to(torch.float32)
    n = batch["labels"].shape[0]
    out = torch.empty((n, layout.dim), dtype=torch.float32, device=weights.device)
    for block in layout.blocks:
        grad = capture.grads.get(block.key)
        if grad is None:  # a layer the loss does not reach: zero gradient
            out[:, block.slice] = 0.0
        else:
            out[:, block.slice] = grad.reshape(n, -1).to(out.device)
    out.mul_(weights.to(out.device)[:, None])
    return out, float(loss.detach())
