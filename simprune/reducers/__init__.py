"""Token reducers: one file per method, all reachable by name through :func:`create_reducer`."""

from simprune.reducers import (  # noqa: F401
    attn_topk,
    dynamic,
    evit,
    expedite,
    mctf,
    mean_sim,
    pcae_ptr,
    random,
    simprune,
    tome,
)
from simprune.reducers.base import REDUCERS, PairReducer, TokenReducer, create_reducer
from simprune.reducers.schedule import WINDOWS, KeepRateSchedule, window_position
from simprune.reducers.simprune import SimPruneReducer

__all__ = [
    "REDUCERS",
    "WINDOWS",
    "KeepRateSchedule",
    "PairReducer",
    "SimPruneReducer",
    "TokenReducer",
    "create_reducer",
    "window_position",
]
