"""Reducer interfaces and the registry that makes them usable by name.

Two kinds of reducer work at a :class:`~simprune.models.vit.ReductionPoint`:

- a *one-branch* reducer (:class:`TokenReducer`) sees one sequence and returns it with ``K`` patch
  tokens (EViT adds one fused token). Applied to both SSL branches, it runs on each independently,
  which is how the SimPrune paper applies EViT and ToMe.
- a *pair* reducer (:class:`PairReducer`, SimPrune) sees the student and teacher tokens of the two
  views compared in the loss and reduces both together.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.registry import Registry
from simprune.tokens import TokenState


class TokenReducer:
    """Reduces one sequence at a point to ``k`` patch tokens (+ ``adds_tokens`` synthetic ones)."""

    name: ClassVar[str] = ""
    #: attention extras the backbone must compute at the points: ⊆ {"cls_attn", "qk"}.
    needs: ClassVar[frozenset[str]] = frozenset()
    #: synthetic tokens added per point (EViT's fused token).
    adds_tokens: ClassVar[int] = 0
    is_pair: ClassVar[bool] = False
    #: where the reducer's points 1..depth sit in their blocks (``simprune.models.vit``'s
    #: ``POINT_PLACEMENTS``): ``attention`` (before the MLP) or ``block`` (after the whole block).
    placement: ClassVar[str] = "attention"
    #: returns exactly ``K`` patch tokens (+ ``adds_tokens``) in every row; ``False``: a
    #: data-dependent count per row, padded to the batch's largest (``dynamic_simprune``)
    exact_count: ClassVar[bool] = True

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        raise NotImplementedError

    def check_plan(self, reduce_at: Sequence[int], num_patches: int) -> None:
        """Refuse, with a ``ValueError`` naming the values, a plan the reducer cannot run: its
        reduction blocks ``reduce_at`` on ``num_patches`` patch tokens. Called when a framework
        builds its plans (before training); default: every plan is fine."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


@dataclass
class PairStats:
    """Per-point diagnostics of a pair reduction (device tensors, detached; read them when logging).

    Attributes:
        position: window position ``p``; start: ``w``.
        sim_mean: mean similarity of all pairs; sim_kept: of the kept pairs.
        many_to_one: share of pruned pairs whose partner is also a kept pair's partner.
        dup_partners: share of kept pairs whose partner another kept pair already has.
        fill_up: share of the teacher's kept tokens that are no kept pair's partner, i.e. came from
            the CLS-attention fill-up (``None`` where the teacher is not reduced: local views).
            With ``K`` teacher tokens kept (``K_t = K``) it equals ``dup_partners``.
        fallback: with ``matching = "one_to_one"``, the share of pairs its proposal rounds left
            to the fallback (``None`` with the argmax matching).
    """

    position: float
    start: int
    sim_mean: Tensor
    sim_kept: Tensor
    many_to_one: Tensor
    dup_partners: Tensor
    fill_up: Tensor | None = None
    fallback: Tensor | None = None


class PairReducer(TokenReducer, metaclass=ABCMeta):
    """Reduces the student and teacher sequences of paired views together.

    What the lock-step driver (:func:`simprune.drive.lockstep_forward`) uses: the attention extras
    each branch must compute (``student_needs``, ``teacher_needs``), :meth:`reduce_pair` for the
    global views and :meth:`reduce_against` for the local views. A pair reducer is not called on a
    single point; ``needs`` is the union of what the two branches compute, for accounting.
    """

    is_pair: ClassVar[bool] = True
    #: training progress at which the window schedule reaches its end (1: the end of training);
    #: the schedule runs compressed over ``[0, reach]`` and holds its last position after
    reach: float = 1.0

    @property
    @abstractmethod
    def student_needs(self) -> frozenset[str]:
        """Attention extras the student branch must compute at the points: ⊆ {"cls_attn", "qk"}."""

    @property
    @abstractmethod
    def teacher_needs(self) -> frozenset[str]:
        """Attention extras the teacher branch must compute at the points: ⊆ {"cls_attn", "qk"}."""

    @abstractmethod
    def reduce_pair(
        self, student: ReductionPoint, teacher: ReductionPoint, k: int, position: float
    ) -> tuple[TokenState, TokenState, PairStats]:
        """Reduce a student point and its paired teacher point to ``k`` patch tokens each.

        Args:
            student: the student's point, ``B`` rows; teacher: the teacher's point with its rows
                already rolled so that row ``b`` is the view the loss compares with student row ``b``.
            k: patch tokens to keep; position: the window position ``p ∈ [0, 1]``.
        Returns:
            the reduced student and teacher states (teacher rows in the rolled order) and stats.
        """

    @abstractmethod
    def reduce_against(
        self, student: ReductionPoint, teacher_tokens: Tensor, k: int, position: float
    ) -> tuple[TokenState, PairStats]:
        """Reduce a student point (local views) against fixed anchor tokens.

        Args:
            student: the local views' point, ``L`` rows; teacher_tokens: ``[L, M, D]`` anchor
                tokens (the patches the teacher kept of the paired global view); k; position.
        Returns:
            the reduced student state and stats; the anchors are not reduced.
        """

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        raise TypeError(f"{self.name!r} is a pair reducer: it reduces two branches together "
                        "(reduce_pair / reduce_against through the lock-step driver), not one point")


REDUCERS: Registry[type[TokenReducer]] = Registry("reducer")


def create_reducer(name: str, **kwargs: Any) -> TokenReducer:
    """Build a registered reducer, e.g. ``create_reducer("tome")``.

    Raises ``KeyError`` listing the known names for an unknown one, and ``TypeError`` listing the
    valid options for an unknown keyword.
    """
    cls = REDUCERS.get(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        import inspect

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise TypeError(f"bad options {sorted(kwargs)} for reducer {name!r}; valid: {params}") from err
