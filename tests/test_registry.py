"""The name registries: reducers, models and window schedules, and their error messages."""

from __future__ import annotations

import pytest
import torch
from reducer_testkit import softmax_rows, synthetic_point

from simprune.models import MODELS
from simprune.reducers import REDUCERS, WINDOWS, PairReducer, TokenReducer, create_reducer
from simprune.reducers.base import PairStats
from simprune.reducers.schedule import window_position
from simprune.registry import Registry
from simprune.tokens import TokenState


def test_register_get_names():
    reg: Registry[int] = Registry("widget")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.get("b") == 2
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"]
    assert "a" in reg and "c" not in reg


def test_register_twice_is_an_error():
    reg: Registry[int] = Registry("widget")
    reg.register("a")(1)
    with pytest.raises(KeyError, match="widget 'a' is already registered"):
        reg.register("a")(2)
    assert reg.get("a") == 1


def test_unknown_name_lists_known_and_suggests():
    reg: Registry[int] = Registry("widget")
    for name in ("alpha", "beta", "gamma"):
        reg.register(name)(0)
    with pytest.raises(KeyError) as err:
        reg.get("alpah")
    msg = str(err.value)
    assert "unknown widget 'alpah'" in msg
    assert "known: alpha, beta, gamma" in msg
    assert "Did you mean 'alpha'?" in msg


EXPECTED_REDUCERS = {"simprune", "evit", "evit_nofuse", "tome", "random", "mean_sim", "attn_topk"}


def test_all_methods_registered():
    assert EXPECTED_REDUCERS <= set(REDUCERS.names())


@pytest.mark.parametrize("name", REDUCERS.names())
def test_every_reducer_builds_and_declares_itself(name):
    reducer = create_reducer(name)
    assert isinstance(reducer, TokenReducer)
    assert reducer.name == name
    assert reducer.needs <= {"cls_attn", "qk"}
    assert reducer.is_pair == isinstance(reducer, PairReducer)
    assert reducer.adds_tokens in (0, 1)
    # the repr names the class and its options, and rebuilds an equal reducer
    cls = type(reducer)
    assert repr(reducer).startswith(f"{cls.__name__}(") and repr(reducer).endswith(")")
    rebuilt = eval(repr(reducer), {cls.__name__: cls})
    assert type(rebuilt) is cls and vars(rebuilt) == vars(reducer)


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("attn_topk", {"attn_keep": 0.5}, "AttnTopKReducer(attn_keep=0.5, attn_form='masked')"),
    ("simprune", {"metric": "keys"},
     "SimPruneReducer(metric='keys', matching='argmax', reach=1.0, rounds=8)"),
    ("tome", {}, "ToMeReducer()"),
])
def test_repr_shows_options(name, options, expected):
    assert repr(create_reducer(name, **options)) == expected


def _point(batch: int = 2, n: int = 12, dim: int = 8, heads: int = 2, seed: int = 0):
    """A reduction point with every attention extra a reducer may ask for."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1 + n, dim, generator=g)
    cls_attn = softmax_rows(torch.randn(batch, 1 + n, generator=g))
    q = torch.randn(batch, heads, 1 + n, dim // heads, generator=g)
    k = torch.randn(batch, heads, 1 + n, dim // heads, generator=g)
    return synthetic_point(x, cls_attn=cls_attn, q=q, k=k)


PAIR_METHODS = ("student_needs", "teacher_needs", "reduce_pair", "reduce_against")


@pytest.mark.parametrize("name", REDUCERS.names())
def test_reducer_protocol(name):
    """A pair reducer implements PairReducer's protocol; every other reducer reduces one point."""
    reducer = create_reducer(name)
    n, k = 16, 7  # a square grid (expedite clusters on it)
    if reducer.is_pair:
        assert isinstance(reducer, PairReducer)
        assert not type(reducer).__abstractmethods__
        for method in PAIR_METHODS:
            assert getattr(type(reducer), method) is not getattr(PairReducer, method), method
        for needs in (reducer.student_needs, reducer.teacher_needs):
            assert isinstance(needs, frozenset) and needs <= {"cls_attn", "qk"}
        s_out, t_out, stats = reducer.reduce_pair(_point(seed=1), _point(seed=2), k, 0.5)
        assert isinstance(s_out, TokenState) and isinstance(t_out, TokenState)
        if reducer.exact_count:
            assert s_out.num_patches == t_out.num_patches == k
        else:  # its own count per row (at least the window's half), padded, the same in both
            assert n >= s_out.num_patches == t_out.num_patches >= n // 2
            assert torch.equal(s_out.valid, t_out.valid)
        assert isinstance(stats, PairStats) and stats.position == 0.5
        anchors = _point(seed=3).state.patches[:, :k]
        local, local_stats = reducer.reduce_against(_point(n=6, seed=4), anchors, 4, 0.5)
        assert isinstance(local, TokenState)
        assert local.num_patches == 4 if reducer.exact_count else 3 <= local.num_patches <= 6
        assert isinstance(local_stats, PairStats)
        with pytest.raises(TypeError, match="pair reducer"):
            reducer(_point(), k)
    else:
        assert not isinstance(reducer, PairReducer)
        assert callable(reducer) and type(reducer).__call__ is not TokenReducer.__call__
        point = _point(n=n)
        out = reducer(point, k)
        assert isinstance(out, TokenState)
        assert out.num_patches == k + reducer.adds_tokens
        assert torch.equal(out.x[:, 0], point.state.x[:, 0])


def test_registered_pair_reducers_exist():
    assert "simprune" in [n for n in REDUCERS.names() if create_reducer(n).is_pair]


def test_pair_reducer_protocol_is_enforced():
    class Half(PairReducer):
        name = "half"

        @property
        def student_needs(self):
            return frozenset()

        def reduce_pair(self, student, teacher, k, position):
            raise NotImplementedError

    with pytest.raises(TypeError, match="reduce_against.*teacher_needs"):
        Half()


def test_unknown_reducer_lists_known():
    with pytest.raises(KeyError) as err:
        create_reducer("simprun")
    msg = str(err.value)
    assert "'simprun'" in msg and "Did you mean 'simprune'" in msg
    for name in REDUCERS.names():
        assert name in msg


def test_bad_reducer_option_lists_valid_ones():
    with pytest.raises(TypeError) as err:
        create_reducer("attn_topk", keep=0.5)
    msg = str(err.value)
    assert "['keep']" in msg and "attn_keep" in msg and "attn_topk" in msg
    with pytest.raises(TypeError, match=r"metric"):
        create_reducer("simprune", metrik="keys")


@pytest.mark.parametrize("value", [0, 1.5, -0.1])
def test_bad_attn_keep(value):
    with pytest.raises(ValueError) as err:
        create_reducer("attn_topk", attn_keep=value)
    assert repr(value) in str(err.value) and "(0, 1]" in str(err.value)


def test_bad_simprune_metric():
    with pytest.raises(ValueError, match=r"'cosine'.*valid: hidden, keys"):
        create_reducer("simprune", metric="cosine")


def test_unknown_model_and_window_list_known():
    with pytest.raises(KeyError) as err:
        MODELS.get("deit_smal_patch16_224")
    assert all(n in str(err.value) for n in MODELS.names())
    with pytest.raises(KeyError) as err:
        window_position("slide", 0.5)
    msg = str(err.value)
    assert "'slide'" in msg and "window schedule" in msg
    for name in ("sliding", "prune_dissimilar", "prune_similar", "two_stage", "two_stage_reverse"):
        assert name in msg
    assert set(WINDOWS.names()) == {"sliding", "prune_dissimilar", "prune_similar", "two_stage",
                                    "two_stage_reverse"}
