"""A Redis server that reaches its ``maxmemory`` with the ``noeviction`` policy: sends are
refused whole, nothing queued is lost, and a worker that met the full server -- and lost
its leases there, since renewing one is a write -- carries on once the server has room
again, running every task once. A worker started on the full server waits too, also one
for a queue the server has never seen (declaring it is a write)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis

from taskflow import App
from taskflow.errors import AuditNotWritten, BrokerError
from tests.conftest import require_service
from tests.integration.redis_helpers import private_redis, start_worker, stop, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOM = 1_500_000  # bytes of maxmemory above what the server holds when the test fills it
LEASE = 2.0


def test_a_full_server_refuses_sends_whole_and_workers_carry_on_once_it_has_room(
    tmp_path: Path,
) -> None:
    # The bodies note their runs on the shared server: on the full one, a body's own write
    # would fail the task.
    require_service("redis", "127.0.0.1", 6379)
    prefix = f"tffull{uuid.uuid4().hex[:8]}"  # of the keys on both servers
    runs_server = redis.Redis(port=6379)
    with private_redis(tmp_path, durable=False) as (port, _):
        server = redis.Redis(port=port)
        url = f"redis://127.0.0.1:{port}/0?prefix={prefix}&lease={LEASE}"
        worker = start_worker(
            url, concurrency=4, env={"TASKFLOW_RUNS_URL": "redis://127.0.0.1:6379/0"}
        )
        workers = [worker]
        inflight = f"{{{prefix}}}:q:default:inflight"
        try:
            with App("full-client", broker=url) as client:
                wait_until(client.admin.workers, 20, "the worker's heartbeat")
                # The worker takes nothing while the server fills.
                client.admin.pause("default")
                server.config_set("maxmemory", int(server.info("memory")["used_memory"]) + ROOM)

                sent = []
                refused: BrokerError | None = None
                for i in range(50_000):
                    try:
                        sent.append(client.send_task("it.add", args=[i, i]))
                    except BrokerError as exc:
                        refused = exc
                        break
                assert refused is not None, "the server never filled up"
                assert "maxmemory" in str(refused)
                assert len(sent) > 500
                # The refused send left nothing behind: as many messages and records as
                # sends that returned.
                assert server.zcard(f"{{{prefix}}}:q:default:ready") == len(sent)
                records = sum(1 for _ in server.scan_iter(match=f"{{{prefix}}}:r:*", count=1000))
                assert records == len(sent)

                # A worker started now, its queue known to the server already, starts
                # (declaring the queue again writes nothing) and waits for room too.
                late = start_worker(
                    url, concurrency=4, env={"TASKFLOW_RUNS_URL": "redis://127.0.0.1:6379/0"}
                )
                workers.append(late)
                # One for a queue the server has never seen needs a write to declare it:
                # it starts and waits for room all the same.
                fresh = start_worker(
                    url,
                    concurrency=2,
                    env={"TASKFLOW_RUNS_URL": "redis://127.0.0.1:6379/0"},
                    queues=("fresh",),
                )
                workers.append(fresh)

                # Resuming only removes a mark: a full server takes it, and the worker
                # takes tasks it cannot start while the server has no room, nor renew
                # their leases. The audit entry is a write the full server refuses: the
                # operator is told the resume took effect all the same.
                with pytest.raises(AuditNotWritten, match="maxmemory") as unaudited:
                    client.admin.as_actor("night-ops").resume("default")
                assert "resume on queue 'default' took effect" in str(unaudited.value)
                # The refused write is named, not quoted (its arguments are the entry's).
                assert "command ZADD (#1 of a pipeline) failed" in str(unaudited.value)
                wait_until(lambda: server.zcard(inflight) > 0, 20, "the worker to take tasks")

                def a_lease_ran_out() -> bool:
                    first = server.zrange(inflight, 0, 0, withscores=True)
                    return bool(first) and first[0][1] < time.time()

                wait_until(a_lease_ran_out, 20, "a lease to run out on the full server")
                assert worker.poll() is None
                assert late.poll() is None, "a worker started on the full server exited"
                assert fresh.poll() is None, "a worker for a new queue exited on the full server"
                assert not server.sismember(f"{{{prefix}}}:queues", "fresh")

                server.config_set("maxmemory", 0)

                def all_ran() -> bool:
                    pattern = f"{prefix}:runs:*"
                    return sum(1 for _ in runs_server.scan_iter(match=pattern, count=1000)) == len(
                        sent
                    )

                wait_until(all_ran, 60, "every task to run")
                # The new queue's worker declared it once it could, and serves it.
                wait_until(
                    lambda: server.sismember(f"{{{prefix}}}:queues", "fresh"),
                    30,
                    "the new queue to be declared",
                )
                assert client.send_task("it.add", args=[20, 22], queue="fresh").get(30) == 42
                assert [r.get(timeout=30) for r in sent[:5]] == [2 * i for i in range(5)]
                assert sent[-1].get(timeout=30) == 2 * (len(sent) - 1)
                pipe = runs_server.pipeline(transaction=False)
                for r in sent:
                    pipe.llen(f"{prefix}:runs:{r.id}")
                assert set(pipe.execute()) == {1}, "a task ran more than once"
                assert client.admin.dead_letters("default").items == []
                # The pause was audited; the refused resume was not (its entry was logged).
                assert [e.action for e in client.admin.audit()] == ["pause"]
                assert [w.poll() for w in workers] == [None, None, None]
        finally:
            for each in workers:
                stop(each)
            for key in runs_server.scan_iter(match=f"{prefix}:*", count=1000):
                runs_server.delete(key)
            runs_server.close()
        assert [w.returncode for w in workers] == [0, 0, 0]
        server.close()
