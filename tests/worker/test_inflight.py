"""The in-flight controller: grows while the server's queue is empty and jobs wait, shrinks when it queues deep."""

from __future__ import annotations

from pathlib import Path

from worker.inference.loads import loads_from_json, loads_from_metrics
from worker.inflight import Band, InflightController, PrefetchLimit, ServerLoad

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sglang-0.5.17"


class Server:
    """A batching server: ``capacity`` run at once, the rest of what the worker holds waits in its queue."""

    def __init__(self, capacity: int, others: int = 0) -> None:
        self.capacity = capacity
        self.others = others  # requests other workers keep at the same server
        self.held = 0

    def load(self) -> ServerLoad:
        total = self.held + self.others
        return ServerLoad(running=min(total, self.capacity), waiting=max(0, total - self.capacity))


def controller(server: Server, *, start: int = 32, backlog: int = 1000, ceiling: int = 1024) -> InflightController:
    applied: list[int] = []

    def apply(limit: int) -> None:
        applied.append(limit)
        server.held = limit  # jobs wait in Redis: the worker holds as many as it may

    ctl = InflightController(
        start=start,
        floor=1,
        ceiling=ceiling,
        read_load=server.load,
        backlog=lambda: backlog,
        holding=lambda: server.held,
        at_server=lambda: server.held,
        apply=apply,
    )
    server.held = ctl.limit
    return ctl


def run(ctl: InflightController, steps: int) -> list[int]:
    limits = []
    for _ in range(steps):
        for _ in range(3):
            ctl.sample()
        limits.append(ctl.decide())
    return limits


def test_a_server_that_runs_512_at_once_is_filled_in_four_steps_and_kept_with_a_small_queue() -> None:
    server = Server(512)
    limits = run(controller(server), 12)
    assert limits[:4] == [64, 128, 256, 512]  # doubling until the server first queues
    assert 512 + Band().queue_low <= server.held <= 512 + Band().high(512) + 1
    assert server.load().waiting > 0  # never an empty queue at the server while jobs wait


def test_after_the_first_queue_growth_is_by_half() -> None:
    """Doubling finds the server's size; once it has queued, more room (another client left) is taken by halves."""
    server = Server(100)
    ctl = controller(server)
    limits = run(ctl, 4)
    assert limits[:3] == [64, 128, 128 - (28 - Band().high(100))]  # 128 queued 28: the excess given back
    server.capacity = 400
    later = run(ctl, 6)
    steps = [b / a for a, b in zip([limits[-1], *later], later, strict=False) if b > a]
    assert steps and all(step <= 1.5 for step in steps)


def test_a_small_server_is_not_flooded_past_the_band() -> None:
    server = Server(8)
    run(controller(server), 10)
    assert 8 + 2 <= server.held <= 8 + Band().high(8)


def test_no_growth_without_jobs_waiting_in_redis() -> None:
    server = Server(512)
    assert [32] * 5 == run(controller(server, backlog=0), 5)


def test_the_ceiling_bounds_the_limit() -> None:
    server = Server(4096)
    assert max(run(controller(server, ceiling=200), 20)) == 200


def test_two_workers_on_one_server_settle_together_in_the_band() -> None:
    """Each sees the other's requests in the server's queue; together they fill it, neither floods it."""
    capacity = 128
    a_server, b_server = Server(capacity), Server(capacity)
    a, b = controller(a_server), controller(b_server)
    for _ in range(30):
        a_server.others, b_server.others = b_server.held, a_server.held
        run(a, 1)
        a_server.others, b_server.others = b_server.held, a_server.held
        run(b, 1)
    total = a_server.held + b_server.held
    assert capacity + 2 <= total <= capacity + Band().high(capacity) + 2


def test_no_growth_when_the_workers_own_cpu_stages_hold_the_jobs() -> None:
    """The server is short of work but most held jobs are still fetching/decoding here: more would not help."""
    server = Server(512)
    ctl = controller(server)
    ctl._at_server = lambda: server.held // 2  # half of what it holds has not reached the server
    assert [32] * 4 == run(ctl, 4)


def test_a_short_queue_seen_while_the_jobs_were_still_here_is_no_reason_to_grow() -> None:
    """The worker's first second: its 32 jobs are fetching and decoding, the server (16 at once) looks idle; by the
    decision they have arrived and queue. Growing on those samples overshot by half a limit (queue 32 for 16)."""
    server = Server(16)
    ctl = controller(server)
    there = {"n": 4}  # sampled while 28 of the 32 were still in the worker's CPU stages
    ctl._at_server = lambda: there["n"]
    ctl._read_load = lambda: ServerLoad(running=there["n"], waiting=0)
    for _ in range(3):
        ctl.sample()
    there["n"] = 32  # at decision time all have reached the server
    assert 32 == ctl.decide()


def test_requests_held_in_the_servers_image_preprocessing_count_as_its_queue() -> None:
    """Seen on the H200 with OneVision at native detail: SGLang preprocesses images on a CPU pool before its
    scheduler sees them, so ``/v1/loads`` said 24 running, 0 waiting while the rest sat in that pool. Counting only
    the scheduler's queue grew the worker to its ceiling (and interactive jobs queued behind them all)."""

    class PreprocessBound(Server):
        def load(self) -> ServerLoad:  # the GPU gets what the CPU pool preprocesses: 24 at a time at most
            return ServerLoad(running=min(self.held, 24), waiting=0)

    server = PreprocessBound(512)
    limits = run(controller(server, start=32), 20)
    assert 24 + Band().queue_low <= limits[-1] <= 24 + Band().high(24) + 1
    assert max(limits) <= 48


def test_a_deep_queue_is_cut_once_not_again_while_the_cut_is_still_draining() -> None:
    server = Server(128)
    ctl = controller(server, start=600)
    holding = {"n": 600}
    ctl._holding = lambda: holding["n"]  # the server still has the 600: nothing finished yet
    first = run(ctl, 1)[0]
    assert 300 <= first < 600
    assert [first] * 3 == run(ctl, 3)  # no second cut until the worker holds no more than its limit
    holding["n"] = first
    assert run(ctl, 1)[0] < first


def test_a_worker_with_nothing_at_the_server_keeps_its_limit_when_others_flood_it() -> None:
    """Found on the H200: a direct client queued 100 requests while the worker was idle; it cut itself to 1."""
    server = Server(84, others=200)
    ctl = controller(server, backlog=0)
    server.held = 0
    ctl._holding = lambda: 0
    ctl._at_server = lambda: 0
    assert [32] * 5 == run(ctl, 5)


def test_without_a_load_signal_the_limit_stays_where_it_started() -> None:
    ctl = InflightController(
        start=32, floor=1, ceiling=1024, read_load=lambda: None, backlog=lambda: 10, holding=lambda: 32,
        at_server=lambda: 32, apply=lambda _: None,
    )
    assert [32, 32, 32] == run(ctl, 3)


def test_the_real_servers_loads_and_metrics_parse() -> None:
    load = loads_from_json((FIXTURES / "v1_loads.json").read_bytes())
    assert ServerLoad(running=0, waiting=0, max_running=4096) == load
    text = (
        'sglang:num_running_reqs{engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 81.0\n'
        'sglang:num_queue_reqs{engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 7.0\n'
        'sglang:num_running_reqs{engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="1"} 81.0\n'
    )
    assert ServerLoad(running=81, waiting=7) == loads_from_metrics(text)
    assert loads_from_metrics("# nothing here\n") is None


class FakeQoS:
    """kombu's QoS surface the limit uses: a value, a mutex, update()."""

    def __init__(self, value: int) -> None:
        import threading

        self.value = value
        self._mutex = threading.RLock()
        self.sent: list[int] = []

    def update(self) -> None:
        self.sent.append(self.value)


def test_the_prefetch_limit_starts_at_the_controllers_limit_and_moves_by_deltas() -> None:
    qos = FakeQoS(1024)  # Celery's initial value: the pool size
    limit = PrefetchLimit(qos, 32)
    assert ([32], 32) == (qos.sent, qos.value)
    qos.value += 1  # Celery counts an ETA task it holds
    limit(48)
    assert 49 == qos.value  # the controller's change and Celery's own both kept


def test_a_raised_prefetch_limit_wakes_the_consumer_loop_and_a_lowered_one_does_not() -> None:
    """The consumer applies a changed count on its next turn; waking it makes that turn now, not at its next timer
    (P1 at C = 128: each step of the ramp waited up to a second for it)."""
    qos, wakes = FakeQoS(1024), []
    limit = PrefetchLimit(qos, 32, wake=lambda: wakes.append(qos.value))
    limit(64)
    assert [64] == wakes  # woken after the new count is in place
    limit(48)
    assert [64] == wakes
