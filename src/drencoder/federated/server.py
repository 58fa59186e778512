"""The server's side of a round: aggregate the messages, decode, update the global adapter
(DESIGN §2 stage 2 step 6). All of it is post-processing of the privatised messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from drencoder.codecs import Codec
from drencoder.mechanisms import Aggregation, GaussianMechanism, NoisePlacement


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

    - ``mean_then_decode``: Dec(mean of messages). With ``central`` noise the server adds
      N(0, σ²C²I) to the *sum* and divides by ``expected_clients``, a public number (q·N
      for Poisson sampling, K for fixed), not the realised count, which would reveal
      participation. The noise is added even when nobody took part: the release must
      not depend on whether it is empty.
    - ``decode_then_mean``: mean of Dec(message) per client (local noise only).
    - ``central`` noise needs ``clip_point = latent`` (the config refuses the other
      combination: a lossy decoder would not preserve the clipped sum's sensitivity).
    - No messages and no central noise: the zero update.
    """
    aggregation = Aggregation(aggregation)
    central = mechanism is not None and mechanism.placement is NoisePlacement.CENTRAL
    if central:
        total = torch.zeros(codec.latent_dim, device=codec.device)
        for m in messages:
            total = total + m.to(codec.device)
        noisy = mechanism.aggregate_noise(total, generator=generator)
        return codec.decode(noisy / expected_clients)
    if not messages:
        return torch.zeros(codec.input_dim, device=codec.device)
    stacked = torch.stack([m.to(codec.device) for m in messages])
    if aggregation is Aggregation.MEAN_THEN_DECODE:
        return codec.decode(stacked.mean(0))
    return codec.decode(stacked).mean(0)
