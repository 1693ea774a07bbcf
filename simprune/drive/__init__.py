"""Drivers that advance backbone generators through their reduction points."""

from simprune.drive.lockstep import DualOutput, PairPoint, dual_forward, lockstep_forward
from simprune.drive.single import PointRecord, Reduced, forward_reduced, rates_per_point

__all__ = [
    "DualOutput",
    "PairPoint",
    "PointRecord",
    "Reduced",
    "dual_forward",
    "forward_reduced",
    "lockstep_forward",
    "rates_per_point",
]
