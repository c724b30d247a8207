"""Sync bodies run in a copy of the context variables of their attempt, as ``async def``
bodies do: what the execute middleware sets is seen, what a body sets stays its own."""

from __future__ import annotations

import contextvars
from typing import Any

from taskflow import App, TaskContext
from taskflow.middleware import ExecuteNext, Middleware

tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)
scratch: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("scratch", default=None)


class Tenant(Middleware):
    """Sets ``tenant`` from the task's headers around the body, as a tenancy layer would."""

    async def execute(self, ctx: TaskContext, call_next: ExecuteNext) -> Any:
        token = tenant.set(ctx.headers.get("tenant"))
        try:
            return await call_next(ctx)
        finally:
            tenant.reset(token)


def test_a_context_variable_set_by_execute_middleware_is_seen_by_sync_and_async_bodies(
    fake_app: App,
) -> None:
    fake_app.add_middleware(Tenant())

    @fake_app.task(name="ctx.sync_tenant")
    def sync_tenant() -> str | None:
        return tenant.get()

    @fake_app.task(name="ctx.async_tenant")
    async def async_tenant() -> str | None:
        return tenant.get()

    sync = sync_tenant.apply_async(headers={"tenant": "acme"})
    other = sync_tenant.apply_async(headers={"tenant": "globex"})
    coro = async_tenant.apply_async(headers={"tenant": "acme"})
    assert fake_app.worker(concurrency=2).run_until_idle() == 3

    assert (sync.get(timeout=1), other.get(timeout=1)) == ("acme", "globex")
    assert coro.get(timeout=1) == "acme"


def test_a_context_variable_a_sync_body_sets_is_not_seen_by_the_next_body(fake_app: App) -> None:
    @fake_app.task(name="ctx.remember")
    def remember(mark: str) -> list[str]:
        seen = scratch.get()
        if seen is None:
            seen = []
            scratch.set(seen)
        seen.append(mark)
        return list(seen)

    first, second = remember.delay("a"), remember.delay("b")
    assert fake_app.worker(concurrency=1).run_until_idle() == 2  # one thread runs both

    assert (first.get(timeout=1), second.get(timeout=1)) == (["a"], ["b"])
    assert scratch.get() is None  # nor by the caller
