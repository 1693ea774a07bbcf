"""Cost figures: analytic FLOPs (:mod:`.flops`, :mod:`.flops_model`), measured FLOPs
(:mod:`.flops_count`) and the time micro-benchmark (:mod:`.micro`).

``simprune bench flops`` and ``simprune bench micro`` call :func:`simprune.bench.flops.run_flops` and
:func:`simprune.bench.micro.run_micro`; both modules also run as ``python -m``.
"""
