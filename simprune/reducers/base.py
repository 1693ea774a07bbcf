"""Reducer interfaces and the registry that makes them usable by name.

Two kinds of reducer work at a :class:`~simprune.models.vit.ReductionPoint`:

- a *one-branch* reducer (:class:`TokenReducer`) sees one sequence and returns it with ``K`` patch
  tokens (EViT adds one fused token). Applied to both SSL branches, it runs on each independently,
  which is how the SimPrune paper applies EViT and ToMe.
- a *pair* reducer (:class:`PairReducer`, SimPrune) sees the student and teacher tokens of the two
  views compared in the loss and reduces both together.
"""

from __future__ import annotations

from typing import Any, ClassVar

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

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class PairReducer(TokenReducer):
    """Reduces the student and teacher sequences of paired views together."""

    is_pair: ClassVar[bool] = True


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
