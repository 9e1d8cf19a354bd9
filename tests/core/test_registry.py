"""Name -> factory registries: decorators, user factories by 'module:function', helpful errors."""
from __future__ import annotations

import pytest

from openmusk.core.registry import Registry, import_object


def test_register_get_and_user_factories():
    reg = Registry("widget")

    @reg.register("small", help="a small widget")
    def small(size: int = 1) -> int:
        return size

    assert reg.get("small")(size=3) == 3 and "small" in reg and reg.names() == ["small"]
    assert reg.describe() == {"small": "a small widget"}
    assert reg.get("os.path:join")("a", "b") == "a/b"       # not registered: imported
    with pytest.raises(ValueError, match="already registered"):
        reg.register("small")(lambda: 0)
    with pytest.raises(KeyError, match=r"unknown widget 'smal' \(did you mean 'small'\?\); known: small"):
        reg.get("smal")


def test_import_object_errors_say_what_was_looked_for():
    with pytest.raises(ValueError, match="expected 'module:function'"):
        import_object("os.path")
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod'"):
        import_object("no_such_mod:f")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        import_object("os.path:nope")
