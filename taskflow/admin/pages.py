"""Server-rendered pages (Jinja2) behind a login session, every form with a CSRF token."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ..clock import utc
from ..errors import BrokerError, ConfigError, NotFound, Unsupported
from ..urls import mask_url
from .auth import Session, csrf_ok
from .charts import throughput_svg
from .http import ApiError, backend_error
from .service import SESSION_COOKIE, AdminService
from .views import schedule_json

__all__ = ["page_routes"]

LOGIN_COOKIE = "taskflow_login"
PAGE_SIZE = 50
_HERE = Path(__file__).parent
Page = Callable[[AdminService, Request, Session], Awaitable[Response]]


def _when(value: Any) -> str:
    """A time (datetime, epoch seconds or ISO text) as ``YYYY-MM-DD HH:MM:SS UTC``."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float):
        value = utc(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if not isinstance(value, datetime):
        return str(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    return Jinja2Templates(env=env)


TEMPLATES = _templates()


class PageError(Exception):
    """Answer a page request with an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _render(
    svc: AdminService, request: Request, name: str, session: Session | None, **context: Any
) -> Response:
    notice = svc.take_notice(request.cookies.get(SESSION_COOKIE)) if session else None
    base: dict[str, Any] = {
        "session": session,
        "notice": notice,
        "app_name": svc.app.kernel.settings.name,
        "broker": mask_url(svc.app.kernel.broker.url),
        "path": request.url.path,
    }
    status = int(context.pop("status", 200))
    base["status"] = status
    response = TEMPLATES.TemplateResponse(request, name, base | context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(svc: AdminService, view: Page) -> Callable[[Request], Awaitable[Response]]:
    """``view`` for logged-in users (others go to the login page)."""

    async def run(request: Request) -> Response:
        session = svc.session(request)
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        try:
            return await view(svc, request, session)
        except (PageError, ApiError) as exc:
            status = exc.status
            message = exc.message
        except NotFound as exc:
            status, message = 404, str(exc.args[0] if exc.args else exc)
        except (ConfigError, Unsupported) as exc:
            status, message = 422, str(exc)
        except BrokerError as exc:
            err = backend_error(exc)
            status, message = err.status, err.message
        return _render(svc, request, "error.html", session, status=status, message=message)

    return run


def _action(svc: AdminService, act: Callable[[AdminService, Request, Session, FormData],
            Awaitable[str]]) -> Page:  # fmt: skip
    """A form POST: CSRF checked, read-only refused, then ``act``; redirects back."""

    async def run(svc: AdminService, request: Request, session: Session) -> Response:
        form = await request.form()
        if not csrf_ok(session.csrf, form.get("csrf")):
            raise PageError(403, "the form's CSRF token is missing or wrong; reload the page")
        if session.principal.read_only:
            raise PageError(403, f"{session.principal.name!r} is read-only")
        back = await act(svc, request, session, form)
        return RedirectResponse(back, status_code=303)

    return run


# -- login -----------------------------------------------------------------------------
async def login_form(request: Request, svc: AdminService, error: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = _render(
        svc, request, "login.html", None, login_csrf=token, error=error,
        next=request.query_params.get("next", "/"), status=401 if error else 200,
    )  # fmt: skip
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=svc.secure_cookies,
        path="/login",
    )  # fmt: skip
    return response


async def login(request: Request, svc: AdminService) -> Response:
    form = await request.form()
    if not csrf_ok(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf")):
        return _render(svc, request, "error.html", None, status=403,
                       message="the login form expired; open the login page again")  # fmt: skip
    token = form.get("token")
    principal = svc.tokens.check(token) if isinstance(token, str) and token else None
    if principal is None:
        return await login_form(request, svc, "That token is not valid.")
    sid, _ = svc.sessions.create(principal, time.time())
    target = str(form.get("next") or "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, sid, httponly=True, samesite="strict", secure=svc.secure_cookies,
        max_age=int(svc.sessions.ttl),
    )  # fmt: skip
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: Request, svc: AdminService) -> Response:
    session = svc.session(request)
    form = await request.form()
    if session is None or not csrf_ok(session.csrf, form.get("csrf")):
        return _render(svc, request, "error.html", session, status=403,
                       message="the form's CSRF token is missing or wrong")  # fmt: skip
    svc.sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


# -- pages -----------------------------------------------------------------------------
async def overview(svc: AdminService, request: Request, session: Session) -> Response:
    queues, workers, totals, alarms = await svc.overview()
    done = totals.get("succeeded", 0) + totals.get("failed", 0)
    failure_rate = totals.get("failed", 0) / done if done else 0.0
    chart = throughput_svg(svc.throughput.minutes(time.time()))
    alive = sum(1 for w in workers if w.state == "alive")
    return _render(svc, request, "overview.html", session, queues=queues, workers=workers,
                   alive=alive, lost=len(workers) - alive, failure_rate=failure_rate,
                   chart=chart, totals=totals, alarms=alarms)  # fmt: skip


async def queue_page(svc: AdminService, request: Request, session: Session) -> Response:
    name = request.path_params["queue"]
    state = request.query_params.get("state", "ready")
    offset = _int(request.query_params.get("offset"), 0)
    queues = {q.name: q for q in await svc.app.admin.aqueues()}
    if name not in queues:
        raise PageError(404, f"no queue {name!r}")
    found = await svc.app.admin.apeek(name, state, PAGE_SIZE + 1, offset)
    return _render(svc, request, "queue.html", session, queue=queues[name], state=state,
                   tasks=found[:PAGE_SIZE], offset=offset, more=len(found) > PAGE_SIZE,
                   page_size=PAGE_SIZE)  # fmt: skip


async def task_page(svc: AdminService, request: Request, session: Session) -> Response:
    info = await svc.app.admin.atask(request.path_params["task_id"])
    return _render(svc, request, "task.html", session, task=info, payload=None)


async def reveal_page(svc: AdminService, request: Request, session: Session) -> Response:
    form = await request.form()
    if not csrf_ok(session.csrf, form.get("csrf")):
        raise PageError(403, "the form's CSRF token is missing or wrong; reload the page")
    info = await svc.app.admin.atask(request.path_params["task_id"])
    payload = await svc.reveal(session.principal, info.id)
    return _render(svc, request, "task.html", session, task=info, payload=payload)


def _dead_filters(source: Any) -> dict[str, str]:
    return {k: str(source.get(k) or "") for k in ("queue", "task", "reason", "since")}


async def dead_page(svc: AdminService, request: Request, session: Session) -> Response:
    filters = _dead_filters(request.query_params)
    since = _since(filters["since"])
    cursor = request.query_params.get("cursor") or None
    page = await svc.app.admin.adead_letters(
        filters["queue"] or None, task=filters["task"] or None,
        reason=filters["reason"] or None, since=since, limit=PAGE_SIZE, cursor=cursor,
    )  # fmt: skip
    queues = [q.name for q in await svc.app.admin.aqueues()]
    next_url = None
    if page.next_cursor:
        next_url = "/dead-letters?" + urlencode(filters | {"cursor": page.next_cursor})
    confirm = {k: v for k, v in filters.items() if v and k != "since"}
    return _render(svc, request, "dead.html", session, page=page, filters=filters,
                   queues=queues, next_url=next_url, confirm_query=urlencode(confirm))  # fmt: skip


async def dead_confirm(svc: AdminService, request: Request, session: Session) -> Response:
    """Before acting on every matching dead letter: how many that is (a dry run)."""
    filters = _dead_filters(request.query_params)
    action = request.query_params.get("action", "replay")
    if action not in ("replay", "discard"):
        raise PageError(422, f"no dead-letter action {action!r}")
    report = await svc.app.admin.areplay(
        filters["queue"] or None, task=filters["task"] or None,
        reason=filters["reason"] or None, dry_run=True,
    )  # fmt: skip
    return _render(svc, request, "confirm.html", session, action=action, filters=filters,
                   count=report.matched)  # fmt: skip


async def schedules_page(svc: AdminService, request: Request, session: Session) -> Response:
    found = [schedule_json(s) for s in await svc.schedules()]
    tasks = sorted(svc.app.kernel.registry)
    return _render(svc, request, "schedules.html", session, schedules=found, tasks=tasks)


async def workers_page(svc: AdminService, request: Request, session: Session) -> Response:
    return _render(svc, request, "workers.html", session, workers=await svc.app.admin.aworkers())


async def audit_page(svc: AdminService, request: Request, session: Session) -> Response:
    offset = _int(request.query_params.get("offset"), 0)
    entries = await svc.app.admin.aaudit(limit=offset + PAGE_SIZE + 1)
    return _render(svc, request, "audit.html", session, entries=entries[offset:offset + PAGE_SIZE],
                   offset=offset, more=len(entries) > offset + PAGE_SIZE,
                   page_size=PAGE_SIZE)  # fmt: skip


# -- actions ---------------------------------------------------------------------------
async def queue_action(svc: AdminService, request: Request, s: Session, form: FormData) -> str:
    name, action = request.path_params["queue"], request.path_params["action"]
    admin = svc.admin(s.principal)
    if action == "pause":
        await admin.apause(name)
    elif action == "resume":
        await admin.aresume(name)
    else:
        raise PageError(404, f"no queue action {action!r}")
    svc.notice(request, f"Queue {name} {'paused' if action == 'pause' else 'resumed'}.")
    return f"/queues/{quote(name)}"


async def cancel_action(svc: AdminService, request: Request, s: Session, form: FormData) -> str:
    task_id = request.path_params["task_id"]
    done = await svc.admin(s.principal).acancel(task_id)
    svc.notice(request, "Task cancelled." if done else "The task had finished already.")
    return f"/tasks/{quote(task_id)}"


async def dead_action(svc: AdminService, request: Request, s: Session, form: FormData) -> str:
    filters = _dead_filters(form)
    back = "/dead-letters?" + urlencode({k: v for k, v in filters.items() if v})
    action, scope = form.get("action"), form.get("scope")
    admin = svc.admin(s.principal)
    kwargs: dict[str, Any] = {"task": filters["task"] or None, "reason": filters["reason"] or None}
    if scope == "selected":
        ids = [str(i) for i in form.getlist("ids")]
        if not ids:
            svc.notice(request, "Nothing selected.")
            return back
        kwargs = {"ids": ids}
    queue = filters["queue"] or None
    if action == "replay":
        report = await admin.areplay(queue, **kwargs)
        svc.notice(request, f"Replayed {report.replayed} of {report.matched} dead letters.")
    elif action == "discard":
        count = await admin.adiscard(queue, **kwargs)
        svc.notice(request, f"Discarded {count} dead letters.")
    else:
        raise PageError(422, f"no dead-letter action {action!r}")
    return back


async def add_schedule(svc: AdminService, request: Request, s: Session, form: FormData) -> str:
    body = {k: str(form.get(k) or "").strip() for k in ("name", "task", "cron", "every",
                                                        "queue", "timezone")}  # fmt: skip
    kind = form.get("kind")
    body.pop("every" if kind == "cron" else "cron")
    await svc.add_schedule(s.principal, {k: v for k, v in body.items() if v})
    svc.notice(request, f"Schedule {body['name']} added.")
    return "/schedules"


async def schedule_action(svc: AdminService, request: Request, s: Session, f: FormData) -> str:
    name, action = request.path_params["name"], request.path_params["action"]
    if action not in ("pause", "resume", "remove"):
        raise PageError(404, f"no schedule action {action!r}")
    await svc.schedule_action(s.principal, name, action)
    svc.notice(request, f"Schedule {name}: {action} done.")
    return "/schedules"


def _int(raw: str | None, default: int) -> int:
    return int(raw) if raw and raw.isdigit() else default


def _since(raw: str) -> float | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise PageError(422, f"since must be a date and time, got {raw[:40]!r}") from None


def page_routes(svc: AdminService) -> list[Route]:
    """Every page and form route."""

    def get(path: str, view: Page) -> Route:
        return Route(path, _page(svc, view), methods=["GET"])

    def post(path: str, view: Page) -> Route:
        return Route(path, _page(svc, view), methods=["POST"])

    async def login_get(request: Request) -> Response:
        return await login_form(request, svc)

    async def login_post(request: Request) -> Response:
        return await login(request, svc)

    async def logout_post(request: Request) -> Response:
        return await logout(request, svc)

    # Queue names, task ids and schedule names may hold a "/": each takes the rest of the
    # path but for the action after it (a GET of a page has none).
    return [
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout_post, methods=["POST"]),
        get("/", overview),
        get("/queues/{queue:path}", queue_page),
        post("/queues/{queue:path}/{action}", _action(svc, queue_action)),
        get("/tasks/{task_id:path}", task_page),
        post("/tasks/{task_id:path}/reveal", reveal_page),
        post("/tasks/{task_id:path}/cancel", _action(svc, cancel_action)),
        get("/dead-letters", dead_page),
        get("/dead-letters/confirm", dead_confirm),
        post("/dead-letters", _action(svc, dead_action)),
        get("/schedules", schedules_page),
        post("/schedules", _action(svc, add_schedule)),
        post("/schedules/{name:path}/{action}", _action(svc, schedule_action)),
        get("/workers", workers_page),
        get("/audit", audit_page),
    ]
