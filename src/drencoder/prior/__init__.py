"""Stage 1 of DR-Encoder: per-block statistics, their DP release, pooling and sampling.

Clients compute :class:`ClientStatistics` of their warm-up updates and upload them through
:class:`StatisticsRelease`; the server pools them (:func:`pool_statistics`) and draws
synthetic updates with :class:`PriorSampler` to train the auto-encoder (docs/design.md §2).
"""

from drencoder.prior.pooling import PooledStatistics, Pooling, pool_statistics
from drencoder.prior.release import StatisticsRelease
from drencoder.prior.sampler import PriorSampler
from drencoder.prior.statistics import BlockStatistics, ClientStatistics

__all__ = [
    "BlockStatistics",
    "ClientStatistics",
    "PooledStatistics",
    "Pooling",
    "PriorSampler",
    "StatisticsRelease",
    "pool_statistics",
]
