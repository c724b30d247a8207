"""What the API and the pages share: the app, the tokens, the sessions, and the actions
that are not in the operations API (schedules, payload reveal) with their audit entries."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..app import App
from ..beat import ScheduleInfo, ScheduleSpec
from ..errors import ConfigError, NotFound, PayloadError
from ..operations import Admin, ClusterStats, QueueInfo, WorkerInfo
from .auth import Principal, Session, SessionStore, TokenStore
from .http import ApiError
from .views import Throughput

__all__ = ["SESSION_COOKIE", "AdminService"]

SESSION_COOKIE = "taskflow_session"
SCHEDULE_FIELDS = ("cron", "every", "queue", "priority", "timezone", "missed", "args", "kwargs")


@dataclass
class AdminService:
    """One admin web service: the app it operates on and who may use it."""

    app: App
    tokens: TokenStore
    read_only: bool = False
    """Every caller is read-only (``taskflow admin --read-only``)."""
    secure_cookies: bool = False
    sessions: SessionStore = field(default_factory=SessionStore)
    throughput: Throughput = field(default_factory=Throughput)
    _notices: dict[str, str] = field(default_factory=dict, repr=False)
    _notice_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- who -------------------------------------------------------------------------
    def bearer(self, request: Request) -> Principal:
        """The caller of an API request (401 without a valid bearer token)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "a bearer token is required (Authorization: Bearer <token>)")
        principal = self.tokens.check(token.strip())
        if principal is None:
            raise ApiError(401, "the bearer token is not valid")
        return self._role(principal)

    def session(self, request: Request) -> Session | None:
        """The login session of a page request, or None."""
        found = self.sessions.get(request.cookies.get(SESSION_COOKIE), time.time())
        if found is None:
            return None
        if self.read_only and not found.principal.read_only:
            return Session(self._role(found.principal), found.csrf, found.expires)
        return found

    def _role(self, principal: Principal) -> Principal:
        return Principal(principal.name, True) if self.read_only else principal

    @staticmethod
    def may_change(principal: Principal) -> None:
        """403 for a read-only caller."""
        if principal.read_only:
            raise ApiError(403, f"{principal.name!r} is read-only: this action changes state")

    def admin(self, principal: Principal) -> Admin:
        """The operations API, audited as ``principal``."""
        return self.app.admin.as_actor(principal.name)

    def notice(self, request: Request, text: str) -> None:
        """A message shown once on the next page this session loads."""
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            with self._notice_lock:
                self._notices[sid] = text

    def take_notice(self, sid: str | None) -> str | None:
        """The session's pending message (and forget it)."""
        if not sid:
            return None
        with self._notice_lock:
            return self._notices.pop(sid, None)

    # -- reading ---------------------------------------------------------------------
    async def stats(self) -> ClusterStats:
        """The cluster's stats; each read also feeds the throughput chart."""
        stats = await self.app.admin.astats()
        self.throughput.add(stats.at.timestamp(), stats.totals)
        return stats

    async def overview(
        self,
    ) -> tuple[list[QueueInfo], list[WorkerInfo], dict[str, int], list[str]]:
        """Queues, workers, the live workers' summed counters and the broker's alarms:
        the overview's data, without the per-task dead-letter counts of :meth:`stats` (a
        scan of every dead letter). Each read feeds the throughput chart too."""
        queues = await self.app.admin.aqueues()
        workers = await self.app.admin.aworkers()
        alarms = await self.app.admin.aalarms()
        totals: dict[str, int] = {}
        for worker in workers:
            if worker.state == "alive":
                for name, count in worker.counters.items():
                    totals[name] = totals.get(name, 0) + count
        self.throughput.add(time.time(), totals)
        return queues, workers, totals, alarms

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, declared and stored, by name."""
        return list(await run_in_threadpool(self.app.schedules.list))

    # -- schedules (the beat's own store, through app.schedules) ---------------------
    async def add_schedule(self, principal: Principal, body: Mapping[str, Any]) -> ScheduleInfo:
        """Store a schedule (409 if the name is taken, 422 for a bad one)."""
        name, task = body.get("name"), body.get("task")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(422, "a schedule needs a name")
        if not isinstance(task, str) or not task:
            raise ApiError(422, f"schedule {name!r} needs a task name")
        unknown = sorted(set(body) - {"name", "task", *SCHEDULE_FIELDS})
        if unknown:
            raise ApiError(422, f"schedule {name!r}: unknown field {unknown[0]!r}")
        if any(s.schedule.name == name for s in await self.schedules()):
            raise ApiError(409, f"a schedule named {name!r} exists already")
        spec: dict[str, Any] = {k: body[k] for k in SCHEDULE_FIELDS if body.get(k) is not None}
        spec["name"] = name

        def add() -> None:
            self.app.add_periodic(task, persist=True, **_spec(spec))

        try:
            await run_in_threadpool(add)
        except (ConfigError, PayloadError, TypeError) as exc:
            raise ApiError(422, str(exc)) from None
        await self.audit(principal, "schedule_add", name, details={"task": task})
        for info in await self.schedules():
            if info.schedule.name == name:
                return info
        raise ApiError(500, f"schedule {name!r} was stored but is not listed")

    async def schedule_action(self, principal: Principal, name: str, action: str) -> None:
        """Pause, resume or remove schedule ``name`` (404 if there is none)."""
        if name not in {s.schedule.name for s in await self.schedules()}:
            raise ApiError(404, f"no schedule named {name!r}")
        calls = {
            "pause": self.app.pause_periodic,
            "resume": self.app.resume_periodic,
            "remove": self.app.remove_periodic,
        }
        try:
            await run_in_threadpool(calls[action], name)
        except NotFound as exc:
            raise ApiError(404, str(exc.args[0] if exc.args else exc)) from None
        await self.audit(principal, f"schedule_{action}", name)

    # -- payload reveal --------------------------------------------------------------
    async def reveal(self, principal: Principal, task_id: str) -> dict[str, Any]:
        """The arguments of a dead-lettered task, for a caller who asked (audited)."""
        info = await self.app.admin.atask(task_id)
        if info.state != "dead":
            raise ApiError(
                409,
                f"task {task_id!r} is {info.state}: only a dead letter's arguments can be shown",
            )
        try:
            return await self.admin(principal).areveal(task_id)
        except NotFound:
            raise ApiError(404, f"task {task_id!r} is no longer a dead letter") from None
        except PayloadError:
            raise ApiError(409, f"the message of task {task_id!r} cannot be decoded") from None

    # -- audit -----------------------------------------------------------------------
    async def audit(
        self,
        principal: Principal,
        action: str,
        target: str,
        *,
        ids: list[str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Write an audit entry for an action the operations API does not record itself."""
        await self.admin(principal).arecord(action, target, ids=ids or (), details=details)


def _spec(spec: dict[str, Any]) -> ScheduleSpec:
    """A schedule body as the keywords of ``add_periodic`` (strings from forms converted)."""
    out: dict[str, Any] = dict(spec)
    try:
        if isinstance(out.get("every"), str):
            out["every"] = float(out["every"])
        if isinstance(out.get("priority"), str):
            out["priority"] = int(out["priority"])
    except ValueError as exc:
        raise ApiError(422, f"schedule {spec.get('name')!r}: {exc}") from None
    if isinstance(out.get("args"), list):
        out["args"] = tuple(out["args"])
    return cast(ScheduleSpec, out)
