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


def test_an_acknowledgement_on_a_pool_thread_wakes_the_consumers_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu fetches into a freed QoS slot only on a turn of its event loop; an ack made on a pool thread must start
    that turn at once, not leave the loop asleep until its next timer (up to a second, measured in P1)."""
    import threading
    import time

    from kombu.asynchronous import Hub, set_event_loop

    acked: list[str] = []
    monkeypatch.setattr(kombu_compat, "_original_ack", lambda self, tag: acked.append(tag))
    hub = Hub()
    reader, writer = __import__("socket").socketpair()  # a reader that never fires: the loop sleeps in poll
    hub.add_reader(reader, lambda *_: None)
    turns: list[float] = []
    hub.on_tick.add(lambda: turns.append(time.monotonic()))
    previous = set_event_loop(hub)
    try:
        loop = hub.create_loop()
        next(loop)  # one turn: the loop now polls with a timeout of a second
        done = threading.Event()

        def run() -> None:
            while not done.is_set():
                next(loop)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        time.sleep(0.05)  # asleep in poll
        before, asked = len(turns), time.monotonic()
        threading.Thread(target=kombu_compat._ack, args=(object(), "tag-1")).start()
        deadline = asked + 0.5
        while len(turns) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ["tag-1"] == acked
        assert len(turns) > before and turns[before] - asked < 0.2  # woken, not left for the 1 s poll timeout
        done.set()
        kombu_compat.wake_consumer()
        thread.join(2)
    finally:
        set_event_loop(previous)
        hub.close()
        reader.close()
        writer.close()


def test_waking_the_consumer_outside_a_worker_does_nothing() -> None:
    from kombu.asynchronous import set_event_loop

    previous = set_event_loop(None)
    try:
        kombu_compat.wake_consumer()  # no event loop: no error
    finally:
        set_event_loop(previous)
