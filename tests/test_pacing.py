"""Poll pacing (worker/pacing.py and its use in worker/polling.py): once a model is timed, a
job is seen done within its latency bar wherever it ends in the learned range; before that,
the model's jobs are probed a few times each, never all at once, and every job is seen done
soon after the first one is. Time is a hand-moved clock throughout; the benchmark's figures
come from the deterministic simulation (bench/pacing_sim.py)."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence

import fakeredis
import pytest

from bench import pacing_sim
from rcbatch.runcomfy.fake import FakeRunComfy
from rcbatch.worker import fetching, polling, submission
from rcbatch.worker.bucket import MemoryBucket
from rcbatch.worker.pacing import (
    Pacer,
    WakePlan,
    guard_interval,
    latency_gap,
    probe_interval,
)
from rcbatch.worker.polling import WAKE_SOON
from rcbatch.worker.runtime import Limits, RecordingPublisher, Runtime
from rcbatch.worker.state import NewItem, Store
from tests.test_steps import ref

MODEL = "bytedance/dreamina-4-0/text-to-image"
#: task hand-off and fetch, which the pacing's margin has to cover
HAND_OFF = 0.15


def bar(duration: float) -> float:
    """The benchmark's latency bar for a job of `duration` s."""
    return 0.1 * duration + 0.5


def pacer_over(history: list[float], now: Callable[[], float] = lambda: 0.0) -> Pacer:
    return Pacer(lambda _model: history, rng=random.Random(7), clock=now)


def poll_times(pacer: Pacer, horizon: float) -> list[float]:
    """A timed job's planned polls (seconds after submission) up to `horizon`."""
    times = [pacer.first_delay(MODEL)]
    while times[-1] < horizon:
        times.append(times[-1] + pacer.next_delay(MODEL, times[-1], len(times)))
    return times


@pytest.mark.parametrize("low, high", [(1.0, 3.0), (30.0, 45.0), (90.0, 120.0), (2.0, 2.0),
                                       (30.0, 30.0)])
def test_a_timed_job_is_seen_within_its_bar_wherever_it_ends(low: float, high: float) -> None:
    history = [low + (high - low) * k / 9 for k in range(10)]
    times = poll_times(pacer_over(history), 2 * high)
    for step in range(400):
        end = low + (2 * high - low) * step / 400
        seen = min(t for t in times if t >= end)
        assert seen - end + HAND_OFF <= bar(end), (end, seen)


def test_jobs_of_one_duration_are_asked_just_after_they_end_not_a_gap_later() -> None:
    # a sweep: every job of the model takes 2 s, those that waited in the API's queue longer
    for history in ([2.0] * 24, [2.0] * 12 + [3.7] * 12, [2.0 + k * 0.001 for k in range(24)],
                    [2.0] * 16 + [2.1, 2.2, 2.3, 2.4] * 2 + [3.6] * 8):
        first = pacer_over(history).first_delay(MODEL)
        assert 0.0 <= first - max(history[:12]) <= 0.05, (history, first)
        assert first < 2.0 + latency_gap(2.0) / 2


def test_a_big_spike_is_aimed_at_even_when_jobs_that_queued_briefly_crowd_the_gap() -> None:
    # late in a sweep: 30 of 100 ends at exactly 2 s, the rest waited up to 0.5 s in the queue
    history = [2.0] * 30 + [2.05 + 0.45 * k / 69 for k in range(70)]
    first = pacer_over(history).first_delay(MODEL)
    assert 0.0 <= first - 2.0 <= 0.05


def test_spread_durations_keep_their_first_poll_a_gap_after_the_earliest_end() -> None:
    # moving the first poll earlier would cost polls: the ends are spread over the gap
    history = [1.0 + 2.0 * k / 199 for k in range(200)]
    early = history[round(0.03 * 199)]
    first = pacer_over(history).first_delay(MODEL)
    assert first >= early + 0.95 * latency_gap(early)


def test_a_few_equal_durations_do_not_yet_pull_the_first_poll_in() -> None:
    first = pacer_over([2.0, 2.0, 2.0]).first_delay(MODEL)
    assert first >= 2.0 + 0.95 * latency_gap(2.0)


def test_a_wave_of_equal_jobs_is_seen_done_by_one_poll_each_just_after_it_ends() -> None:
    durations = {f"i{k:02d}": 2.0 for k in range(12)}
    cluster = Cluster(durations, history=[2.0] * 24)
    cluster.run(until=cluster.now + 10.0)
    items = [cluster.item(iid) for iid in durations]
    assert all(r["state"] == "completed" for r in items)
    assert len(cluster.asked) == len(durations)
    for r in items:
        assert float(r["remote_finished_at"]) - (float(r["submitted_at"]) + 2.0) <= 0.05


def test_a_first_poll_planned_on_a_short_history_wakes_at_the_earliest_end_to_aim_again(
) -> None:
    pacer = pacer_over([2.0, 2.0, 2.0])
    assert pacer.first_wake(MODEL) == 2.0  # too few ends to show a spike yet
    assert pacer.re_aim(MODEL, 2.0, 0.5) == 0.5  # still too few: the plan stands
    pacer = pacer_over([2.0] * 12)
    assert pacer.first_wake(MODEL) is None  # the first aim already saw the spike
    assert pacer.re_aim(MODEL, 2.0, 0.5) <= 0.05  # ask now (just after the spike)
    assert pacer_over([]).first_wake(MODEL) is None  # untimed: the cold start's wake-ups


def test_spread_durations_are_not_re_aimed() -> None:
    pacer = pacer_over([1.0 + 2.0 * k / 199 for k in range(200)])
    assert pacer.re_aim(MODEL, 1.1, 0.4) == 0.4


def test_refills_submitted_before_the_history_showed_a_spike_are_seen_just_after_they_end(
) -> None:
    # a wave's first refills go out when only a few of its jobs' durations are known; by the
    # time they may end, the rest of the wave has been seen (another worker recorded them)
    durations = {f"i{k:02d}": 2.0 for k in range(12)}
    cluster = Cluster(durations, history=[2.0] * 3)
    cluster.run(until=cluster.now + 1.0)
    for _ in range(12):
        cluster.store.record_duration(MODEL, 2.0)
    cluster.run(until=cluster.now + 10.0)
    items = [cluster.item(iid) for iid in durations]
    assert all(r["state"] == "completed" for r in items)
    assert len(cluster.asked) == len(durations)  # the wake-up asked nothing of the API
    for r in items:
        assert float(r["remote_finished_at"]) - (float(r["submitted_at"]) + 2.0) <= 0.05


def test_the_last_wave_of_a_uniform_sweep_is_asked_twice_as_often() -> None:
    # half the jobs end at 2 s, the others waited in the API's queue and end later
    uniform = pacer_over([2.0] * 20 + [2.4 + 0.1 * k for k in range(20)])
    usual = uniform.next_delay(MODEL, 2.6, 2)
    assert uniform.next_delay(MODEL, 2.6, 2, tail=True) == pytest.approx(usual / 2, rel=0.06)
    assert uniform.next_delay(MODEL, 1.0, 0, tail=True) == pytest.approx(
        uniform.next_delay(MODEL, 1.0, 0), rel=0.06)  # its first poll keeps its aim


def test_a_sweeps_last_job_that_waited_in_the_api_queue_is_asked_every_half_gap() -> None:
    cluster = Cluster({"i00": 3.0}, history=[2.0] * 20 + [2.4 + 0.1 * k for k in range(20)])
    cluster.run(until=cluster.now + 10.0)
    assert cluster.item("i00")["state"] == "completed"  # nothing left to submit: the tail
    submitted = float(cluster.item("i00")["submitted_at"])
    first, second = cluster.asked[0] - submitted, cluster.asked[1] - submitted
    assert first < 2.1 and second - first <= 0.55 * latency_gap(first)


def test_spread_durations_keep_their_gaps_in_the_tail() -> None:
    spread = pacer_over([1.0 + 2.0 * k / 199 for k in range(200)])
    assert spread.next_delay(MODEL, 2.0, 2, tail=True) >= 0.95 * latency_gap(2.0)


#: a sweep's durations from submission once a whole wave waits in the API's queue
QUEUED = [2.0] * 24 + [2.0 + 2.0 * k / 175 for k in range(176)]


def refill_pacer(refill_times: list[float], durations: list[float] = QUEUED) -> Pacer:
    return Pacer(lambda _model: durations, rng=random.Random(7), clock=lambda: 0.0,
                 refill_times=lambda _model: refill_times)


def test_a_refill_is_first_asked_near_the_top_of_its_waves_refill_times() -> None:
    # a wave's refills end two job times after the ends that freed their slots, give or
    # take the spread of the wave's ends; this one was submitted 0.4 s after its slot's end
    times = [3.8 + 0.3 * k / 99 for k in range(100)]
    aim = refill_pacer(times).refill_aim(MODEL)
    assert aim == pytest.approx(3.8 + 0.3 * 0.9 + 0.02, abs=0.01)


def test_refill_times_that_are_not_a_waves_leave_the_first_poll_to_the_durations() -> None:
    half_queued = [2.1 + 0.3 * k / 49 for k in range(50)] + [4.0] * 50
    spread = [1.0 + 4.0 * k / 199 for k in range(200)]
    for times in (half_queued, spread, [4.0] * 7):
        assert refill_pacer(times).refill_aim(MODEL) is None, times[:3]


def test_durations_as_narrow_as_the_refill_times_decide() -> None:
    # no queue: a refill ends a job's time after its own submission; its refill time adds
    # how late the end that freed its slot was seen
    times = [2.1 + 0.2 * k / 99 for k in range(100)]
    assert refill_pacer(times, durations=[2.0] * 200).refill_aim(MODEL) is None


def test_a_timed_job_is_not_polled_before_the_earliest_jobs_end() -> None:
    times = poll_times(pacer_over([30.0 + k for k in range(16)]), 60.0)
    assert times[0] >= 30.0
    # 30 s .. 60 s with each poll about 8 % + 0.35 s after the last: about ln 2 / ln 1.09
    assert len([t for t in times if t <= 60.0]) <= 8


def test_a_short_history_is_read_again_at_every_decision() -> None:
    history = [60.0]
    pacer = pacer_over(history)
    assert pacer.first_delay(MODEL) >= 60.0
    history.append(20.0)  # another worker records a faster job
    assert pacer.first_delay(MODEL) < 25.0


def test_a_job_woken_too_young_to_be_done_sleeps_until_its_first_planned_poll() -> None:
    pacer = pacer_over([30.0 + k for k in range(10)])
    delay = pacer.resume_delay(MODEL, 10.0)
    assert delay is not None and 20.0 <= delay <= 20.0 + 0.08 * 30 + 0.35
    assert pacer.resume_delay(MODEL, 31.0) is None  # it may be done already: ask now


class ColdModel:
    """Jobs of one untimed model waking as `Pacer.cold_wake` plans, with an in-memory guard
    (worker/polling.py `_take_scout`); `asked` lists (time, job) of every API poll."""

    def __init__(self, jobs: int, young: Callable[[int], bool] = lambda _job: False) -> None:
        self.pacer = pacer_over([])
        self.young = young
        self.guard = -1.0
        self.asked: list[tuple[float, int]] = []
        self.wakes = [(0.35, k, None) for k in range(jobs)]

    def take_guard(self, now: float, window: float, own: bool) -> bool:
        if own or self.guard <= now:
            self.guard = now + window
            return True
        return False

    def run(self, until: float) -> None:
        heap: list[tuple[float, int, float | None]] = list(self.wakes)
        heapq.heapify(heap)
        while heap[0][0] < until:
            now, job, probe_at = heapq.heappop(heap)

            def take_guard(window: float, own: bool, now: float = now) -> bool:
                return self.take_guard(now, window, own)

            plan = self.pacer.cold_wake(now, now, young=self.young(job), probe_at=probe_at,
                                        key=f"req-{job}", take_guard=take_guard)
            if plan.poll:
                self.asked.append((now, job))
                probe_at = self.pacer.next_probe(now, now)
                plan = WakePlan(False, self.pacer.next_delay(MODEL, now, 1), probe_at)
            heapq.heappush(heap, (now + plan.delay, job, plan.probe_at))


def test_an_untimed_model_asks_each_job_once_per_probe_interval() -> None:
    model = ColdModel(20)
    model.run(until=60.0)
    per_job = [sorted(t for t, j in model.asked if j == job) for job in range(20)]
    # its own probes, plus now and then the guard's (mostly in the first seconds, while the
    # guard's window is shorter than the gaps between the jobs' own probes)
    assert all(1 <= len(times) <= 6 for times in per_job)
    assert sum(len(times) for times in per_job) <= 20 * 4  # legacy rule: about 130
    # once the guard is looser than the stream of probes, about n per probe interval
    late = [t for times in per_job for t in times if t >= 30.0]
    assert len(late) <= 20 * 30.0 / probe_interval(30.0) * 1.5


def test_an_untimed_model_with_one_job_is_asked_once_per_latency_bar() -> None:
    model = ColdModel(1)
    model.run(until=60.0)
    times = [t for t, _ in model.asked]
    assert times[0] <= 1.0
    wake = 0.02 * 60 + 0.35  # it notices a free guard at its next wake-up
    assert all(b - a <= guard_interval(a) + wake for a, b in itertools.pairwise(times))


def test_young_jobs_of_an_untimed_model_never_ask() -> None:
    model = ColdModel(10, young=lambda job: job >= 5)
    model.run(until=60.0)
    assert {job for _, job in model.asked} <= set(range(5))


class Cluster:
    """rcbatch's real steps over fakeredis and the fake API, run in countdown order by a
    hand-moved clock; the fake API ends each job `durations[item]` s after its submission."""

    def __init__(self, durations: dict[str, float], history: Sequence[float] = (),
                 in_flight: int | None = None) -> None:
        self.now = 1_000.0
        self.api = FakeRunComfy(auto_advance=False)
        self.publisher = RecordingPublisher()
        self.store = Store(fakeredis.FakeRedis(), clock=lambda: self.now)
        self.rt = Runtime(store=self.store, client=self.api.client(),
                          buckets=lambda _url: MemoryBucket(), publisher=self.publisher,
                          limits=Limits(max_in_flight=in_flight or len(durations),
                                        submit_rate=1000),
                          clock=lambda: self.now)
        self.rt.pacer = Pacer(self.store.recent_durations, rng=random.Random(3),
                              clock=lambda: self.now,
                              refill_times=self.store.recent_refill_times)
        self.durations = durations
        self.queue: list[tuple[float, int, str, tuple[object, ...]]] = []
        self.sent = 0
        #: when the API was asked about a job's result
        self.asked: list[float] = []
        specs = [NewItem(iid, "in.jsonl", k + 1, MODEL, {"prompt": iid})
                 for k, iid in enumerate(durations)]
        self.store.register("b", {"name": "b", "bucket_url": "memory://t"}, specs)
        for seconds in history:  # the model timed by an earlier batch
            self.store.record_duration(MODEL, seconds)
        submission.dispatch(self.rt)

    def run(self, until: float) -> None:
        steps = {"submit": submission.submit, "poll": polling.poll, "fetch": fetching.fetch}
        self._collect()
        while self.queue and self.queue[0][0] <= until:
            self.now, _, kind, args = heapq.heappop(self.queue)
            self._end_jobs()
            before = len(self.api.calls("result"))
            if kind in steps:
                steps[kind](self.rt, ref(kind, args))
            self.asked += [self.now] * (len(self.api.calls("result")) - before)
            self._collect()

    def item(self, iid: str) -> dict[str, str]:
        return self.store.item("b", iid) or {}

    def _collect(self) -> None:
        for kind, args, countdown in self.publisher.take():
            self.sent += 1
            heapq.heappush(self.queue, (self.now + countdown, self.sent, kind, args))

    def _end_jobs(self) -> None:
        for iid, duration in self.durations.items():
            record = self.item(iid)
            rid, submitted = record.get("request_id"), record.get("submitted_at")
            if rid and submitted and self.api.jobs[rid].state == "in_queue" and (
                    self.now >= float(submitted) + duration):
                self.api.finish(rid)


class QueueingCluster(Cluster):
    """A Cluster whose API runs at most `cap` jobs at once, the others waiting in its queue
    in submission order, as RunComfy's does: a sweep of `waves` x `cap` equal jobs."""

    def __init__(self, waves: int, cap: int, seconds: float, in_flight: int) -> None:
        self.seconds = seconds
        self.free = [0.0] * cap  # when each of the API's slots frees
        #: request id -> when its job ends
        self.ends: dict[str, float] = {}
        super().__init__({f"i{k:03d}": seconds for k in range(waves * cap)},
                         history=[seconds] * 24, in_flight=in_flight)

    def end_of(self, iid: str) -> float:
        return self.ends[self.item(iid)["request_id"]]

    def _end_jobs(self) -> None:
        records = [self.item(iid) for iid in self.durations]
        fresh = sorted((float(r["submitted_at"]), r["request_id"]) for r in records
                       if r.get("request_id") and r["request_id"] not in self.ends)
        for submitted, rid in fresh:  # each takes the first slot to free, in submit order
            end = max(submitted, heapq.heappop(self.free)) + self.seconds
            heapq.heappush(self.free, end)
            self.ends[rid] = end
        for r in records:
            rid = r.get("request_id")
            if rid and self.api.jobs[rid].state == "in_queue" and self.now >= self.ends[rid]:
                self.api.finish(rid, seconds=self.ends[rid] - float(r["submitted_at"]))


def test_refills_waiting_a_wave_in_the_api_queue_are_seen_just_after_they_end(
) -> None:
    # a whole wave waits in the API's queue: a refill ends two job times after the end that
    # freed its slot, however long after that end it was submitted, while its duration from
    # submission spreads over a job's time (jobs seen late were refilled late)
    cluster = QueueingCluster(waves=10, cap=4, seconds=2.0, in_flight=8)
    cluster.run(until=cluster.now + 40.0)
    items = {iid: cluster.item(iid) for iid in cluster.durations}
    assert all(r["state"] == "completed" for r in items.values())
    # from the fifth wave on, refills end while their model's refill times are known: those
    # planned before are re-aimed at their wave's end when their first poll finds them busy,
    # the later ones are asked once
    later = list(items)[16:]
    assert all(items[iid].get("slot_freed_at") for iid in later)
    for iid in later:
        assert float(items[iid]["remote_finished_at"]) - cluster.end_of(iid) <= 0.05
    assert [int(items[iid]["polls"]) for iid in later[-16:]] == [1] * 16
    assert max(int(items[iid]["polls"]) for iid in later) <= 3
    assert cluster.store.recent_refill_times(MODEL)[0] == pytest.approx(4.0)


def test_a_first_wave_is_timed_by_a_few_probes_and_then_seen_within_the_bar() -> None:
    # 20 jobs of a model never seen, ending 30-44 s after submission (the fake API says
    # each took 30 s, which becomes the model's learned duration)
    durations = {f"i{k:02d}": 30.0 + (7 * k) % 20 * 0.75 for k in range(20)}
    cluster = Cluster(durations)
    cluster.run(until=cluster.now + 120.0)
    items = {iid: cluster.item(iid) for iid in durations}
    assert all(r["state"] == "completed" for r in items.values())
    start = min(float(r["submitted_at"]) for r in items.values())
    first_seen = min(float(r["remote_finished_at"]) for r in items.values())
    # the first jobs to end are the ones seen late (see Pacer.cold_wake), by a few seconds
    assert first_seen - (start + 30.0) <= 2 * bar(30.0)
    assert len([t for t in cluster.asked if t < first_seen]) <= 20 * 3  # the probes
    assert len(cluster.asked) <= 20 * 6  # then every poll 8 % + 0.35 s after the last
    late = [iid for iid, record in items.items()
            if float(record["remote_finished_at"]) - float(record["submitted_at"])
            - durations[iid] > bar(durations[iid])]
    assert len(late) <= 5
    assert all(float(items[iid]["submitted_at"]) + durations[iid] < first_seen for iid in late)


def test_the_simulated_benchmark_meets_its_bars() -> None:
    videos = [pacing_sim.simulate(pacing_sim.VIDEOS, seed)["all"] for seed in range(16)]
    assert sum(f.polls for f in videos) / len(videos) <= 4.0
    assert sorted(f.p95 for f in videos)[len(videos) // 2] <= 1.0
    assert sum(1 for f in videos if f.polls <= 4.0 and f.p95 <= 1.0) >= 2 * len(videos) // 3
    images = [pacing_sim.simulate(pacing_sim.IMAGES, seed)["all"] for seed in range(3)]
    assert all(f.polls <= 3.0 and f.p95 <= 1.0 for f in images)


def test_the_simulation_is_deterministic() -> None:
    assert pacing_sim.simulate(pacing_sim.VIDEOS, 5) == pacing_sim.simulate(pacing_sim.VIDEOS, 5)


def test_the_first_duration_of_a_model_wakes_its_waiting_jobs_at_once() -> None:
    # every job ends at 30 s: once one is seen done, the others (ended meanwhile) are asked
    # in the poll timer's next round instead of at their next wake-up (~1 s later at that age)
    durations = {f"i{k:02d}": 30.0 for k in range(10)}
    cluster = Cluster(durations)
    cluster.run(until=cluster.now)
    while not cluster.store.recent_durations(MODEL):
        cluster.run(until=cluster.queue[0][0])
    seen_first = cluster.now
    cluster.run(until=seen_first + WAKE_SOON)  # what is due by then, nothing later
    assert all(cluster.item(iid)["state"] == "completed" for iid in durations)
    assert {float(cluster.item(iid)["finished_at"]) for iid in durations} <= {
        seen_first, seen_first + WAKE_SOON}
