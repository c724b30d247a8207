"""Real processes on Redis: one worker and two ``taskflow beat`` processes; an every-second
schedule runs about once a second, and keeps running after one beat is killed."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import ROOT, running, wait_for
from tests.conftest import require_service

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(90)]

URL = "redis://127.0.0.1:6379/0"
APPS = Path(__file__).parent / "apps"
PYTHONPATH = f"{APPS}:{ROOT}"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix on the shared server; every key under it is deleted afterwards."""
    require_service("redis", "127.0.0.1", 6379)
    name = f"tfbeat{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(URL)
    for pattern in (f"{name}:*", f"{{{name}}}:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            client.delete(key)
    client.close()


def leader_of(beats: list) -> int:  # type: ignore[type-arg]
    """Index of the beat whose log says it leads now (its last "leads"/"follows" line)."""
    leaders = []
    for index, beat in enumerate(beats):
        lines = [ln for ln in beat.stderr.splitlines() if ln.endswith((" leads", " follows"))]
        if lines and lines[-1].endswith(" leads"):
            leaders.append(index)
    assert len(leaders) == 1, [b.stderr for b in beats]
    return leaders[0]


def test_two_beats_fire_an_every_second_schedule_once_per_second_and_survive_a_kill(
    tmp_path: Path, prefix: str
) -> None:
    env = {"BEAT_TEST_URL": URL, "BEAT_TEST_PREFIX": prefix, "PYTHONPATH": PYTHONPATH}
    client = redis.Redis.from_url(URL)

    def count() -> int:
        return int(client.get(f"{prefix}:test:count") or 0)

    beat_args = ["beat", "-A", "beat_app", "--lease", "2", "--loglevel", "info"]
    with (
        running(["worker", "-A", "beat_app", "-c", "4"], tmp_path, env=env) as worker,
        running(beat_args, tmp_path, env=env) as beat_a,
        running(beat_args, tmp_path, env=env) as beat_b,
    ):
        wait_for(lambda: count() >= 2, 30, "the first runs of the schedule")
        start = count()
        time.sleep(5.0)  # real time: what is measured is runs per wall-clock second
        in_five_seconds = count() - start
        assert 4 <= in_five_seconds <= 6, in_five_seconds

        beats = [beat_a, beat_b]
        leader = beats[leader_of(beats)]
        survivor = beat_b if leader is beat_a else beat_a
        leader.proc.send_signal(signal.SIGKILL)
        leader.wait(10)
        killed_at = count()
        wait_for(lambda: "leads" in survivor.stderr, 10, "the surviving beat to take over")
        time.sleep(5.0)
        # At most one lease (2 s) without a leader; the gap fires once, not as a storm.
        after_kill = count() - killed_at
        assert 3 <= after_kill <= 7, after_kill

        for process in (survivor, worker):
            process.signal(signal.SIGTERM)
        assert survivor.wait(20) == 0, survivor.stderr
        assert worker.wait(40) == 0, worker.stderr

    ids = [raw.decode() for raw in client.lrange(f"{prefix}:test:ids", 0, -1)]
    assert len(ids) == len(set(ids)), "a run executed twice"
    assert all(i.startswith("beat:tick:") for i in ids)
    client.close()


def test_worker_with_beat_runs_the_schedule_in_one_process_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    env = {"PYTHONPATH": PYTHONPATH}
    args = ["worker", "-A", "beat_memory_app", "--beat", "-c", "2"]
    with running(args, tmp_path, env=env) as worker:
        wait_for(lambda: len(list(tmp_path.glob("ran-*"))) >= 2, 20, "two scheduled runs")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.stderr
    assert all(p.name.startswith("ran-beat_mark_") for p in tmp_path.glob("ran-*"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_beat_stops_on_a_signal_with_status_zero(tmp_path: Path, signum: signal.Signals) -> None:
    with running(
        ["beat", "-A", "beat_memory_app"], tmp_path, env={"PYTHONPATH": PYTHONPATH}
    ) as beat:
        wait_for(lambda: " leads" in beat.stderr, 20, "the beat to start leading")
        beat.signal(signum)
        assert beat.wait(20) == 0, beat.stderr
    assert "stopped" in beat.stderr
