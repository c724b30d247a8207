"""The JSON API under ``/api/v1/``: one small handler per endpoint, described by
:data:`ENDPOINTS` (from which the OpenAPI document is built)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import BrokerError, ConfigError, NotFound, Unsupported
from .auth import Principal
from .http import ApiError, backend_error, error_response, json_body
from .service import AdminService
from .views import MAX_LIMIT, decode_offset, encode_offset, jsonable, page_of, schedule_json

__all__ = ["ENDPOINTS", "Endpoint", "api_routes", "guarded"]

Handler = Callable[[AdminService, Request, Principal], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """One API operation: route, handler, and what the OpenAPI document says about it."""

    method: str
    path: str
    handler: Handler
    summary: str
    changes: bool = False
    """Changes state: refused (403) for read-only callers."""
    query: tuple[str, ...] = ()
    body: str | None = None
    """The name of the request body schema, if any."""
    response: str = "Object"
    status: int = 200


# -- parameters ------------------------------------------------------------------------
def _limit(request: Request, default: int = 50) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(422, f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw[:20]!r}")
    return int(raw)


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ApiError(422, f"{key} must be a string")
    return value or None


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(422, f"{key} must be true or false")
    return value


def _ids(body: dict[str, Any], required: bool = False) -> list[str] | None:
    value = body.get("ids")
    if value is None and not required:
        return None
    if not isinstance(value, list) or not all(isinstance(i, str) and i for i in value):
        raise ApiError(422, "ids must be a list of task ids")
    return value


def _since(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        raise ApiError(
            422, f"since must be epoch seconds or an ISO 8601 time, got {raw[:40]!r}"
        ) from None


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json_body(json.loads(raw))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "the request body is not valid JSON") from None


# -- handlers --------------------------------------------------------------------------
async def list_queues(svc: AdminService, request: Request, who: Principal) -> Any:
    queues = await svc.app.admin.aqueues()
    return page_of(queues, decode_offset(request.query_params.get("cursor")), _limit(request))


async def get_queue(svc: AdminService, request: Request, who: Principal) -> Any:
    name = request.path_params["queue"]
    for queue in await svc.app.admin.aqueues():
        if queue.name == name:
            return jsonable(queue)
    raise ApiError(404, f"no queue {name!r}")


async def queue_tasks(svc: AdminService, request: Request, who: Principal) -> Any:
    state = request.query_params.get("state", "ready")
    offset, limit = decode_offset(request.query_params.get("cursor")), _limit(request)
    found = await svc.app.admin.apeek(request.path_params["queue"], state, limit + 1, offset)
    return {
        "items": jsonable(found[:limit]),
        "next_cursor": encode_offset(offset + limit) if len(found) > limit else None,
    }


async def pause_queue(svc: AdminService, request: Request, who: Principal) -> Any:
    await svc.admin(who).apause(request.path_params["queue"])
    return {"queue": request.path_params["queue"], "paused": True}


async def resume_queue(svc: AdminService, request: Request, who: Principal) -> Any:
    await svc.admin(who).aresume(request.path_params["queue"])
    return {"queue": request.path_params["queue"], "paused": False}


async def purge_queue(svc: AdminService, request: Request, who: Principal) -> Any:
    body = await _body(request)
    count = await svc.admin(who).apurge(
        request.path_params["queue"],
        scheduled=_flag(body, "scheduled"),
        dry_run=_flag(body, "dry_run"),
    )
    return {"purged": count, "dry_run": _flag(body, "dry_run")}


async def get_task(svc: AdminService, request: Request, who: Principal) -> Any:
    return jsonable(await svc.app.admin.atask(request.path_params["task_id"]))


async def cancel_task(svc: AdminService, request: Request, who: Principal) -> Any:
    return {"cancelled": await svc.admin(who).acancel(request.path_params["task_id"])}


async def reveal_task(svc: AdminService, request: Request, who: Principal) -> Any:
    return await svc.reveal(who, request.path_params["task_id"])


async def retry_tasks(svc: AdminService, request: Request, who: Principal) -> Any:
    body = await _body(request)
    ids = _ids(body, required=True) or []
    return jsonable(await svc.admin(who).aretry_report(ids, dry_run=_flag(body, "dry_run")))


async def list_dead(svc: AdminService, request: Request, who: Principal) -> Any:
    q = request.query_params
    try:
        page = await svc.app.admin.adead_letters(
            q.get("queue") or None,
            task=q.get("task") or None,
            reason=q.get("reason") or None,
            since=_since(q.get("since")),
            limit=_limit(request),
            cursor=q.get("cursor") or None,
        )
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from None
    return jsonable(page)


def _filters(body: dict[str, Any]) -> dict[str, Any]:
    return {"ids": _ids(body), "task": _text(body, "task"), "reason": _text(body, "reason")}


async def replay_dead(svc: AdminService, request: Request, who: Principal) -> Any:
    body = await _body(request)
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ApiError(422, "limit must be a positive integer")
    report = await svc.admin(who).areplay(
        _text(body, "queue"), **_filters(body), limit=limit, dry_run=_flag(body, "dry_run")
    )
    return jsonable(report)


async def discard_dead(svc: AdminService, request: Request, who: Principal) -> Any:
    body = await _body(request)
    count = await svc.admin(who).adiscard(
        _text(body, "queue"), **_filters(body), dry_run=_flag(body, "dry_run")
    )
    return {"discarded": count, "dry_run": _flag(body, "dry_run")}


async def list_workers(svc: AdminService, request: Request, who: Principal) -> Any:
    workers = await svc.app.admin.aworkers()
    return page_of(workers, decode_offset(request.query_params.get("cursor")), _limit(request))


async def get_stats(svc: AdminService, request: Request, who: Principal) -> Any:
    return jsonable(await svc.stats())


async def list_audit(svc: AdminService, request: Request, who: Principal) -> Any:
    offset, limit = decode_offset(request.query_params.get("cursor")), _limit(request)
    entries = await svc.app.admin.aaudit(limit=offset + limit + 1)
    return page_of(entries, offset, limit)


async def list_schedules(svc: AdminService, request: Request, who: Principal) -> Any:
    found = [schedule_json(s) for s in await svc.schedules()]
    return page_of(found, decode_offset(request.query_params.get("cursor")), _limit(request))


async def add_schedule(svc: AdminService, request: Request, who: Principal) -> Any:
    return schedule_json(await svc.add_schedule(who, await _body(request)))


def _schedule_action(action: str) -> Handler:
    async def act(svc: AdminService, request: Request, who: Principal) -> Any:
        name = request.path_params["name"]
        await svc.schedule_action(who, name, action)
        return {"name": name, "action": action}

    return act


async def version(svc: AdminService, request: Request, who: Principal) -> Any:
    return {"version": __version__, "app": svc.app.kernel.settings.name}


_PAGE = ("limit", "cursor")
_Q = "/api/v1/queues/{queue}"
_S = "/api/v1/schedules/{name}"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/api/v1/queues", list_queues, "List queues with counts", query=_PAGE,
             response="QueuePage"),
    Endpoint("GET", _Q, get_queue, "One queue's counts", response="Queue"),
    Endpoint("GET", _Q + "/tasks", queue_tasks, "Tasks of a queue in one state",
             query=("state", *_PAGE), response="TaskPage"),
    Endpoint("POST", _Q + "/pause", pause_queue, "Pause a queue", changes=True),
    Endpoint("POST", _Q + "/resume", resume_queue, "Resume a queue", changes=True),
    Endpoint("POST", _Q + "/purge", purge_queue, "Drop a queue's waiting tasks", changes=True,
             body="PurgeRequest"),
    Endpoint("GET", "/api/v1/tasks/{task_id}", get_task, "One task's record and history",
             response="Task"),
    Endpoint("POST", "/api/v1/tasks/{task_id}/cancel", cancel_task, "Cancel a task",
             changes=True),
    Endpoint("POST", "/api/v1/tasks/{task_id}/reveal", reveal_task,
             "Show a dead-lettered task's arguments (audited)", response="Payload"),
    Endpoint("POST", "/api/v1/tasks/retry", retry_tasks, "Send failed tasks again",
             changes=True, body="RetryRequest", response="ReplayReport"),
    Endpoint("GET", "/api/v1/dead-letters", list_dead, "List dead letters",
             query=("queue", "task", "reason", "since", *_PAGE), response="DeadLetterPage"),
    Endpoint("POST", "/api/v1/dead-letters/replay", replay_dead, "Replay dead letters",
             changes=True, body="DeadLetterAction", response="ReplayReport"),
    Endpoint("POST", "/api/v1/dead-letters/discard", discard_dead, "Discard dead letters",
             changes=True, body="DeadLetterAction"),
    Endpoint("GET", "/api/v1/workers", list_workers, "List workers", query=_PAGE,
             response="WorkerPage"),
    Endpoint("GET", "/api/v1/stats", get_stats, "Cluster stats", response="Stats"),
    Endpoint("GET", "/api/v1/audit", list_audit, "Audit log, newest first", query=_PAGE,
             response="AuditPage"),
    Endpoint("GET", "/api/v1/schedules", list_schedules, "List schedules", query=_PAGE,
             response="SchedulePage"),
    Endpoint("POST", "/api/v1/schedules", add_schedule, "Add a schedule", changes=True,
             body="ScheduleRequest", response="Schedule", status=201),
    Endpoint("POST", _S + "/pause", _schedule_action("pause"), "Pause a schedule",
             changes=True),
    Endpoint("POST", _S + "/resume", _schedule_action("resume"), "Resume a schedule",
             changes=True),
    Endpoint("DELETE", _S, _schedule_action("remove"), "Remove a schedule", changes=True),
    Endpoint("GET", "/version", version, "Service and app version", response="Version"),
)  # fmt: skip


def guarded(svc: AdminService, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint`` behind the bearer check, the read-only check and the error mapping."""

    async def run(request: Request) -> Response:
        try:
            who = svc.bearer(request)
            if endpoint.changes:
                svc.may_change(who)
            result = await endpoint.handler(svc, request, who)
        except ApiError as exc:
            return error_response(request, exc.status, exc.message, exc.code)
        except NotFound as exc:
            return error_response(request, 404, str(exc.args[0] if exc.args else exc))
        except Unsupported as exc:
            return error_response(request, 409, str(exc), "unsupported")
        except ConfigError as exc:
            return error_response(request, 422, str(exc))
        except BrokerError as exc:
            err = backend_error(exc)
            return error_response(request, err.status, err.message, err.code)
        return JSONResponse(result, status_code=endpoint.status)

    return run


def api_routes(svc: AdminService) -> list[Route]:
    """The API's routes, each guarded.

    A queue name, task id or schedule name may hold a ``/`` (sent percent-encoded, it
    reaches the router decoded): each parameter takes the rest of the path but for a
    fixed suffix, and the routes with a suffix are tried first, so ``GET
    /api/v1/queues/a/b/tasks`` lists the tasks of queue ``a/b``."""
    ordered = sorted(ENDPOINTS, key=lambda e: "{" not in e.path or e.path.endswith("}"))
    return [
        Route(
            re.sub(r"{(\w+)}", r"{\1:path}", e.path),
            guarded(svc, e),
            methods=[e.method],
            name=f"{e.method} {e.path}",
        )
        for e in ordered
    ]
