"""guardq patches private kombu internals: it checks at start that they still have the shape it patches (unit)."""

from __future__ import annotations

import pytest

from worker import kombu_compat


def test_the_installed_kombu_passes_the_self_check() -> None:
    kombu_compat.check_internals()
    kombu_compat.install()  # idempotent, and checks again


def test_a_kombu_whose_patched_internals_changed_is_refused_with_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    def append(self: object, message: object) -> None:  # a future kombu dropped the delivery tag argument
        return None

    monkeypatch.setitem(kombu_compat._PATCHED_SIGNATURES, "QoS.append", (append, ["self", "message", "delivery_tag"]))
    with pytest.raises(RuntimeError, match=r"QoS.append\('self', 'message'\) no longer takes"):
        kombu_compat.check_internals()


def test_a_kombu_outside_the_supported_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kombu_compat.kombu, "__version__", "5.9.1")
    with pytest.raises(RuntimeError, match=r"version 5\.9\.1 is outside"):
        kombu_compat.check_internals()
