"""What a benchmark reads of the processes it measures (``/proc``) and of the Redis server.

A worker started for a drain is a tree of processes (a supervisor, worker processes, the
process pool's children): :func:`tree` finds it once per reading, and the figures are
summed over it.
"""

from __future__ import annotations

import os

import redis

__all__ = [
    "idle_share",
    "local_process",
    "machine_idle",
    "process_cpu",
    "server_cpu",
    "split",
    "thread_times",
    "tree",
    "tree_cpu",
    "tree_rss",
]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> list[str] | None:
    """The fields of a ``stat`` file after the command name; None if it is gone."""
    try:
        with open(path) as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def local_process(name: str) -> int | None:
    """The pid of a process of this machine whose command name is ``name`` (a server the
    benchmark measures, such as ``nats-server``), or None."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() == name:
                        return int(entry)
            except OSError:
                continue
    return None


def process_cpu(pid: int) -> float:
    """CPU seconds of the process ``pid`` itself (0.0 once it is gone)."""
    fields = _stat(f"/proc/{pid}/stat")
    return 0.0 if fields is None else sum(int(v) for v in fields[11:13]) / _TICK


def tree(root: int) -> dict[int, list[str]]:
    """``root`` and its live descendants, each with its ``stat`` fields."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(f"/proc/{entry}/stat")
            if fields is not None:
                stats[int(entry)] = fields
    found = {}
    for pid, fields in stats.items():
        walk = pid
        while walk not in (root, 0, 1) and walk in stats:
            walk = int(stats[walk][1])  # the parent
        if walk == root:
            found[pid] = fields
    return found


def tree_cpu(root: int) -> tuple[float, float]:
    """CPU seconds of ``root`` and every live descendant, and of the process pool's
    children among them."""
    total = children = 0.0
    for pid, fields in tree(root).items():
        seconds = sum(int(v) for v in fields[11:15]) / _TICK
        total += seconds
        if _is_child(pid):
            children += seconds
    return total, children


def tree_rss(root: int) -> float:
    """Resident memory, in MB, of ``root`` and its live descendants."""
    pages = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/statm") as statm:
                pages += int(statm.read().split()[1])
        except OSError:
            continue
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def thread_times(root: int) -> dict[int, tuple[float, int]]:
    """CPU seconds and voluntary context switches of every thread of ``root`` and its
    live descendants, by thread id."""
    times: dict[int, tuple[float, int]] = {}
    for pid in tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            fields = _stat(f"/proc/{pid}/task/{tid}/stat")
            if fields is None:
                continue
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as status:
                    lines = status.read().splitlines()
            except OSError:
                continue
            waits = next(int(ln.split()[1]) for ln in lines if ln.startswith("voluntary_"))
            times[int(tid)] = ((int(fields[11]) + int(fields[12])) / _TICK, waits)
    return times


def split(
    before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]], tasks: int
) -> tuple[float, float, float, float]:
    """CPU µs and voluntary switches per task of the threads in ``before`` (read before
    the drain), then of those the drain started (:func:`thread_times` both)."""
    old = [0.0, 0.0]
    new = [0.0, 0.0]
    for tid, (cpu, waits) in after.items():
        side, start = (old, before[tid]) if tid in before else (new, (0.0, 0))
        side[0] += cpu - start[0]
        side[1] += waits - start[1]
    return old[0] * 1e6 / tasks, old[1] / tasks, new[0] * 1e6 / tasks, new[1] / tasks


def server_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (user and system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def machine_idle() -> tuple[int, int]:
    """The machine's CPU time so far, idle and in all (clock ticks summed over its CPUs,
    ``/proc/stat``); (0, 0) where there is no such file. Two readings give the share of
    the CPUs that sat idle between them."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(word) for word in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    # user nice system idle iowait irq softirq steal (guest time is counted in user)
    return fields[3] + fields[4], sum(fields[:8])


def idle_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the CPUs' time that sat idle between two :func:`machine_idle` readings,
    in percent (0 where unknown)."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


def _is_child(pid: int) -> bool:
    """Whether ``pid`` is a child process of the process pool."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"taskflow.worker._child" in cmdline.read()
    except OSError:
        return False
