"""The name registries: reducers, models and window schedules, and their error messages."""

from __future__ import annotations

import pytest

from simprune.models import MODELS
from simprune.reducers import REDUCERS, WINDOWS, PairReducer, TokenReducer, create_reducer
from simprune.reducers.schedule import window_position
from simprune.registry import Registry


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
    assert name in repr(reducer) or type(reducer).__name__ in repr(reducer)


def test_only_simprune_is_a_pair_reducer():
    assert [n for n in REDUCERS.names() if create_reducer(n).is_pair] == ["simprune"]
    assert [n for n in REDUCERS.names() if create_reducer(n).adds_tokens] == ["evit"]


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
