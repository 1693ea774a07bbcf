"""Sample filters (:class:`simprune.data.sampler.SampleFilter`): which examples an epoch trains on.

- :class:`~simprune.data.filters.forgetting.ForgettingFilter`: Tri-Level E-ViT's example level
  (a seeded random subset, forgetting statistics on the device, remove-and-restore rounds), and
  its random-refresh baseline on the same schedule.

A framework supplies its filter through its ``sample_filter(indices)`` hook (see
:class:`simprune.frameworks.base.Framework`); the trainer keeps the filter's state in the
checkpoint.
"""

from simprune.data.filters.forgetting import ForgettingFilter, round_epochs

__all__ = ["ForgettingFilter", "round_epochs"]
