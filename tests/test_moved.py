"""Old import paths keep working for one release, with a warning naming the new one."""

from __future__ import annotations

import importlib
import sys

import pytest

from adaptive._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_forwards_to_its_new_module_with_a_warning(old):
    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        alias = importlib.import_module(old)
    public = [n for n in (getattr(new, "__all__", None) or dir(new)) if not n.startswith("_")]
    assert public, f"{MOVED[old]} exports nothing"
    for name in public:
        assert getattr(alias, name) is getattr(new, name)
    with pytest.raises(AttributeError):
        alias.no_such_name  # noqa: B018


def test_from_import_of_an_old_path_gives_the_same_objects():
    from adaptive.model.latency import SplitModel

    sys.modules.pop("adaptive.latency", None)
    with pytest.warns(DeprecationWarning):
        from adaptive.latency import SplitModel as Old
    assert Old is SplitModel


def test_a_new_path_is_not_shadowed_and_unknown_paths_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("adaptive.no_such_module")
    assert importlib.import_module("adaptive.model.latency").__name__ == "adaptive.model.latency"
