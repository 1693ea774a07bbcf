"""Cost figures: FLOPs of the real training step of any registered framework × reducer
(:mod:`.flops`, counted by :mod:`.flops_count`), the cost benchmark of real training steps
(:mod:`.cost`, :mod:`.cost_step`) and the time micro-benchmark (:mod:`.micro`).

``simprune bench flops``, ``simprune bench cost`` and ``simprune bench micro`` call
:func:`simprune.bench.flops.run_flops`, :func:`simprune.bench.cost.run_cost` and
:func:`simprune.bench.micro.run_micro`; the modules also run as ``python -m``.
"""
