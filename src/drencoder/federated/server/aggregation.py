"""The server's side of a round: aggregate the messages, decode, update the global adapter
(docs/design.md §2 stage 2 step 6). All of it is post-processing of the privatised messages.

A round's aggregate is computed in two steps: :func:`release` forms what the round
releases in the latent space (the noised mean for ``mean_then_decode``, the messages
themselves for ``decode_then_mean``), :func:`decode_release` turns it into the update.
:func:`aggregate` is the two together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from drencoder.codecs import Codec
from drencoder.mechanisms import Aggregation, GaussianMechanism, NoisePlacement


def release(
    messages: Sequence[torch.Tensor],
    *,
    codec: Codec,
    mechanism: GaussianMechanism | None,
    aggregation: Aggregation,
    expected_clients: float,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """What the round releases, in the latent space, before decoding.

    - ``central`` noise: (sum of messages + N(0, σ²C²I)) / ``expected_clients``, a public
      number (q·N for Poisson sampling, K for fixed), not the realised count, which would
      reveal participation. The noise is added even when nobody took part: the release
      must not depend on whether it is empty.
    - otherwise ``mean_then_decode``: the mean of the (locally noised) messages, summed
      one at a time so that memory does not grow with the number of clients;
      ``decode_then_mean``: the messages stacked ``[n, k]``.
    - no messages and no central noise: None (the zero update).
    """
    aggregation = Aggregation(aggregation)
    central = mechanism is not None and mechanism.placement is NoisePlacement.CENTRAL
    if central:
        total = torch.zeros(codec.latent_dim, device=codec.device)
        for m in messages:
            total = total + m.to(codec.device)
        noisy = mechanism.aggregate_noise(total, generator=generator)
        return noisy / expected_clients
    if not messages:
        return None
    if aggregation is Aggregation.MEAN_THEN_DECODE:
        total = torch.zeros(codec.latent_dim, device=codec.device)
        for m in messages:
            total += m.to(codec.device)
        return total / len(messages)
    return torch.stack([m.to(codec.device) for m in messages])


def decode_release(
    released: torch.Tensor | None, *, codec: Codec, aggregation: Aggregation
) -> torch.Tensor:
    """The decoded global update (flat, in the codec's input space) of a :func:`release`."""
    if released is None:
        return torch.zeros(codec.input_dim, device=codec.device)
    if released.ndim == 2:  # decode_then_mean: one message per row
        return codec.decode(released).mean(0)
    return codec.decode(released)


def aggregate(
    messages: Sequence[torch.Tensor],
    *,
    codec: Codec,
    mechanism: GaussianMechanism | None,
    aggregation: Aggregation,
    expected_clients: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The decoded global update (flat, in the codec's input space).

    - ``mean_then_decode``: Dec(mean of messages); with ``central`` noise the noised sum
      divided by ``expected_clients`` (see :func:`release`).
    - ``decode_then_mean``: mean of Dec(message) per client (local noise only).
    - ``central`` noise needs ``clip_point = latent`` (the config refuses the other
      combination: a lossy decoder would not preserve the clipped sum's sensitivity).
    - No messages and no central noise: the zero update.
    """
    released = release(
        messages,
        codec=codec,
        mechanism=mechanism,
        aggregation=aggregation,
        expected_clients=expected_clients,
        generator=generator,
    )
    return decode_release(released, codec=codec, aggregation=aggregation)
