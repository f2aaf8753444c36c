"""Issue 17: targets name classes by index or by name; a bad target says which forms exist."""

from __future__ import annotations

import pytest

from convscope.attribution import resolve_target
from convscope.errors import UserInputError


def test_class_targets_by_name(default_subject):
    assert resolve_target(default_subject, "class:zebra").classes == (340,)
    assert resolve_target(default_subject, "class:Egyptian cat").classes == (285,)
    t = resolve_target(default_subject, "prob:egyptian_cat")
    assert t.kind == "prob" and t.classes == (285,)
    assert resolve_target(default_subject, "logit:ESPRESSO").classes == (967,)
    assert t.describe(0, default_subject) == "p(Egyptian cat)"


def test_a_bare_number_is_a_class(default_subject):
    t = resolve_target(default_subject, "285")
    assert t.kind == "class" and t.classes == (285,)
    assert resolve_target(default_subject, 285) == t


def test_bad_class_names_get_close_matches(default_subject):
    with pytest.raises(UserInputError, match="unknown class 'zebar'; did you mean 'zebra'"):
        resolve_target(default_subject, "class:zebar")
    with pytest.raises(UserInputError, match="class:INDEX or class:NAME"):
        resolve_target(default_subject, "class:")
    with pytest.raises(UserInputError, match="out of range"):
        resolve_target(default_subject, "class:1000")


def test_targets_without_a_colon_say_what_is_expected(default_subject):
    with pytest.raises(UserInputError, match=r"class:N.*did you mean class:zebra\?") as err:
        resolve_target(default_subject, "zebra")
    assert "LAYER:UNIT" in str(err.value)
    with pytest.raises(UserInputError, match=r"did you mean class:Egyptian_cat\?"):
        resolve_target(default_subject, "egyptian cat")
    with pytest.raises(UserInputError, match=r"did you mean classifier:UNIT"):
        resolve_target(default_subject, "classifer")
    with pytest.raises(UserInputError, match=r"unknown layer 'classifer'; did you mean classifier"):
        resolve_target(default_subject, "classifer:3")


def test_attacks_fooling_and_class_models_take_class_names():
    import torch

    from convscope.adversarial import fool, pgd
    from convscope.synthesis import class_model
    from convscope.testing import tiny_subject

    tiny = tiny_subject()
    x = torch.rand(2, 3, 32, 32)
    named = pgd(tiny, x, eps=0.1, steps=2, target="Class3")
    indexed = pgd(tiny, x, eps=0.1, steps=2, target=3)
    assert torch.equal(torch.as_tensor(named.adversarial), torch.as_tensor(indexed.adversarial))
    assert pgd(tiny, x, eps=0.1, steps=1, target=["class1", 2]).success.shape == (2,)
    assert fool(tiny, "class4", steps=2).target == 4
    syn = class_model(tiny, ["class2", 5], steps=2, size=32)
    assert syn.labels == ["class2", "class5"]
    for call in (
        lambda: pgd(tiny, x, target="dog"),
        lambda: fool(tiny, "dog", steps=1),
        lambda: class_model(tiny, ["dog"], steps=1),
    ):
        with pytest.raises(UserInputError, match="unknown class 'dog'"):
            call()
