"""The JSON API: every endpoint answers, needs a token, refuses read-only callers on every
change (leaving the state as it was), and answers every error with the one envelope."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from taskflow import App
from taskflow.errors import BrokerError
from taskflow.operations import Admin

from .conftest import OPS, VIEWER, Seeded, auth, error_of

# (method, path template, JSON body) of every endpoint that changes state.
CHANGES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/v1/queues/{queue}/pause", None),
    ("POST", "/api/v1/queues/{queue}/resume", None),
    ("POST", "/api/v1/tasks/{waiting}/cancel", None),
    ("POST", "/api/v1/queues/{other}/purge", {}),
    ("POST", "/api/v1/tasks/retry", {"ids": ["{dead}"]}),
    ("POST", "/api/v1/dead-letters/replay", {}),
    ("POST", "/api/v1/dead-letters/discard", {}),
    (
        "POST",
        "/api/v1/schedules",
        {"name": "nightly", "task": "{task}", "every": 60, "args": [1, 2]},
    ),
    ("POST", "/api/v1/schedules/{schedule}/pause", None),
    ("POST", "/api/v1/schedules/{schedule}/resume", None),
    ("DELETE", "/api/v1/schedules/{schedule}", None),
]
READS = [
    "/api/v1/queues",
    "/api/v1/queues/{queue}",
    "/api/v1/queues/{queue}/tasks?state=dead",
    "/api/v1/tasks/{dead}",
    "/api/v1/dead-letters",
    "/api/v1/workers",
    "/api/v1/stats",
    "/api/v1/audit",
    "/api/v1/schedules",
    "/version",
]


def _fill(text: str, seeded: Seeded) -> str:
    values = {
        "queue": seeded.queue,
        "other": seeded.other,
        "waiting": seeded.waiting[0],
        "dead": seeded.dead[0],
        "task": seeded.add.name,
        "schedule": "existing",
    }
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _body(body: dict[str, Any] | None, seeded: Seeded) -> Any:
    return None if body is None else json.loads(_fill(json.dumps(body), seeded))


def _state(client: TestClient) -> Any:
    """Everything a change could touch, read through the API."""
    h = auth(OPS)
    return [
        client.get(p, headers=h).json()["items"]
        for p in ("/api/v1/queues", "/api/v1/dead-letters", "/api/v1/schedules", "/api/v1/audit")
    ]


@pytest.fixture
def with_schedule(admin_app: App, seeded: Seeded) -> None:
    admin_app.add_periodic(seeded.add, every=3600.0, name="existing", args=(1, 2), persist=True)


def test_every_read_endpoint_answers_a_valid_token(client: TestClient, seeded: Seeded) -> None:
    for path in READS:
        response = client.get(_fill(path, seeded), headers=auth(VIEWER))
        assert response.status_code == 200, (path, response.text)
    queues = client.get("/api/v1/queues", headers=auth(OPS)).json()["items"]
    counts = {q["name"]: (q["ready"], q["dead"]) for q in queues}
    assert counts == {seeded.queue: (0, 4), seeded.other: (5, 0)}
    task = client.get(f"/api/v1/tasks/{seeded.dead[0]}", headers=auth(OPS)).json()
    assert (task["state"], task["status"], task["error"]["type"]) == (
        "dead",
        "failed",
        "ValueError",
    )
    assert "card-0" not in json.dumps(task)  # never the arguments
    health = client.get("/healthz")  # no token needed
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_every_endpoint_refuses_a_missing_or_wrong_token(
    client: TestClient, seeded: Seeded
) -> None:
    calls = [("GET", p, None) for p in READS] + CHANGES
    for method, path, body in calls:
        for headers in ({}, auth("not-a-token"), {"Authorization": "Basic b3BzOng="}):
            response = client.request(
                method, _fill(path, seeded), json=_body(body, seeded), headers=headers
            )
            assert response.status_code == 401, (method, path, response.text)
            assert error_of(response)["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.usefixtures("with_schedule")
def test_read_only_tokens_change_nothing_anywhere(client: TestClient, seeded: Seeded) -> None:
    before = _state(client)
    for method, path, body in CHANGES:
        response = client.request(
            method, _fill(path, seeded), json=_body(body, seeded), headers=auth(VIEWER)
        )
        assert response.status_code == 403, (method, path, response.text)
        assert "read-only" in error_of(response)["message"]
    assert _state(client) == before


def test_a_service_started_read_only_refuses_changes_even_to_a_full_token(
    admin_app: App, seeded: Seeded, token_file: Any
) -> None:
    from taskflow.admin import create_app

    with TestClient(create_app(admin_app, tokens=token_file, read_only=True)) as ro:
        response = ro.post(f"/api/v1/queues/{seeded.queue}/pause", headers=auth(OPS))
        assert response.status_code == 403
        assert ro.get("/api/v1/queues", headers=auth(OPS)).status_code == 200
    assert admin_app.admin.paused() == set()


@pytest.mark.usefixtures("with_schedule")
def test_every_change_endpoint_works_and_is_audited_with_the_caller(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    for method, path, body in CHANGES:
        response = client.request(
            method, _fill(path, seeded), json=_body(body, seeded), headers=auth(OPS)
        )
        assert response.status_code in (200, 201), (method, path, response.text)
    audit = admin_app.admin.audit(limit=50)
    assert {e.actor for e in audit} == {"ops"}
    actions = [e.action for e in reversed(audit)]
    assert actions == [
        "pause", "resume", "cancel", "purge", "retry", "replay",
        "schedule_add", "schedule_pause", "schedule_resume", "schedule_remove",
    ]  # fmt: skip
    # The effects are real: the purge emptied the other queue, the replay sent the
    # remaining dead letters back (the discard then found none), the schedule is gone.
    queues = {q.name: q for q in admin_app.admin.queues()}
    assert queues[seeded.other].ready == 0
    assert admin_app.admin.task(seeded.waiting[0]).status == "cancelled"
    assert queues[seeded.queue].ready == 4 and queues[seeded.queue].dead == 0
    assert [s.schedule.name for s in admin_app.schedules.list()] == ["nightly"]


def test_dead_letter_actions_follow_their_filters(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    dry = client.post(
        "/api/v1/dead-letters/replay",
        json={"task": seeded.fail_name, "dry_run": True},
        headers=auth(OPS),
    ).json()
    assert (dry["matched"], dry["dry_run"]) == (4, True)
    assert len(admin_app.admin.dead_letters().items) == 4  # a dry run moves nothing
    one = client.post(
        "/api/v1/dead-letters/replay", json={"ids": [seeded.dead[1]]}, headers=auth(OPS)
    ).json()
    assert one["ids"] == [seeded.dead[1]]
    gone = client.post(
        "/api/v1/dead-letters/discard", json={"queue": seeded.queue}, headers=auth(OPS)
    ).json()
    assert gone == {"discarded": 3, "dry_run": False}
    assert admin_app.admin.dead_letters().items == []


def test_lists_page_by_cursor(client: TestClient, seeded: Seeded) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/v1/dead-letters", params=query, headers=auth(OPS)).json()
        seen += [d["task_id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == seeded.dead
    first = client.get("/api/v1/queues?limit=1", headers=auth(OPS)).json()
    second = client.get(
        f"/api/v1/queues?limit=1&cursor={first['next_cursor']}", headers=auth(OPS)
    ).json()
    assert [q["name"] for q in first["items"] + second["items"]] == sorted(
        [seeded.queue, seeded.other]
    )
    assert second["next_cursor"] is None
    tasks = client.get(
        f"/api/v1/queues/{seeded.other}/tasks?state=ready&limit=2", headers=auth(OPS)
    ).json()
    rest = client.get(
        f"/api/v1/queues/{seeded.other}/tasks?state=ready&limit=5&cursor={tasks['next_cursor']}",
        headers=auth(OPS),
    ).json()
    assert [t["id"] for t in tasks["items"] + rest["items"]] == seeded.waiting


def test_a_queue_or_task_id_holding_a_slash_is_reached_by_its_encoded_name(
    client: TestClient, admin_app: App, seeded: Seeded
) -> None:
    # Taken by producers ("emails/high", "order/42"), and reached through %2F, which the
    # router sees decoded: each parameter takes the path up to its fixed suffix.
    sent = seeded.add.apply_async(args=(1, 2), queue="emails/high", task_id="order/42")
    h = auth(OPS)
    queue = client.get("/api/v1/queues/emails%2Fhigh", headers=h)
    assert (queue.status_code, queue.json()["name"], queue.json()["ready"]) == (
        200, "emails/high", 1,
    )  # fmt: skip
    tasks = client.get("/api/v1/queues/emails%2Fhigh/tasks", headers=h).json()["items"]
    assert [t["id"] for t in tasks] == ["order/42"]
    assert client.get("/api/v1/tasks/order%2F42", headers=h).json()["queue"] == "emails/high"
    assert client.post("/api/v1/queues/emails%2Fhigh/pause", headers=h).status_code == 200
    assert admin_app.admin.paused() == {"emails/high"}
    assert client.post("/api/v1/tasks/order%2F42/cancel", headers=h).status_code == 200
    assert sent.status.value == "cancelled"
    assert client.get("/api/v1/queues/no%2Fsuch", headers=h).status_code == 404


def test_errors_use_one_envelope_with_the_right_status(
    client: TestClient, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = auth(OPS)
    bad_cron = {"name": "x", "task": seeded.add.name, "cron": "not cron", "args": [1, 2]}
    cases = [
        (client.get("/api/v1/tasks/no-such-task", headers=h), 404, "not_found"),
        (client.get("/api/v1/queues/nope", headers=h), 404, "not_found"),
        (client.get("/api/v1/no/such/route", headers=h), 404, "not_found"),
        (client.get("/api/v1/queues?limit=0", headers=h), 422, "invalid"),
        (client.get("/api/v1/dead-letters?cursor=%%%", headers=h), 422, "invalid"),
        (client.post("/api/v1/tasks/retry", content=b"{not json", headers=h), 422, "invalid"),
        (client.post("/api/v1/schedules", json=bad_cron, headers=h), 422, "invalid"),
        (client.put("/api/v1/queues", headers=h), 405, "method_not_allowed"),
        (client.post(f"/api/v1/tasks/{seeded.waiting[0]}/reveal", headers=h), 409, "conflict"),
        (client.post(f"/api/v1/queues/{seeded.queue}/pause", headers=auth(VIEWER)), 403,
         "forbidden"),
        (client.get("/api/v1/queues"), 401, "unauthorized"),
    ]  # fmt: skip
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert error_of(response)["code"] == code
    body = {"name": "dup", "task": seeded.add.name, "every": 5, "args": [1, 2]}
    assert client.post("/api/v1/schedules", json=body, headers=h).status_code == 201
    duplicate = client.post("/api/v1/schedules", json=body, headers=h)
    assert duplicate.status_code == 409 and error_of(duplicate)["code"] == "conflict"

    async def broken(self: Admin) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Admin, "aqueues", broken)
    failed = client.get("/api/v1/queues", headers=h)
    assert failed.status_code == 500
    error = error_of(failed)
    assert error["code"] == "internal" and "secret internals" not in error["message"]


def test_a_backend_error_is_503_with_its_message_not_an_internal_error(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(self: Admin) -> Any:
        raise BrokerError("redis://:***@10.0.0.7:6379/0 did not answer within 5 s")

    monkeypatch.setattr(Admin, "aqueues", down)
    response = client.get("/api/v1/queues", headers=auth(OPS))
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "unavailable"
    assert error["message"] == "redis://:***@10.0.0.7:6379/0 did not answer within 5 s"


def test_an_action_whose_audit_is_refused_answers_that_it_took_effect(
    client: TestClient, seeded: Seeded, admin_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(entry: dict[str, Any], *, retention: float) -> None:
        raise BrokerError("OOM command not allowed when used memory > 'maxmemory'")

    monkeypatch.setattr(admin_app.kernel.results, "add_audit", refused)
    response = client.post(f"/api/v1/queues/{seeded.queue}/pause", headers=auth(OPS))
    # Not 503: a client retrying on its own would do the action twice.
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "audit_not_written"
    assert f"pause on queue {seeded.queue!r} took effect" in error["message"]
    assert admin_app.admin.paused() == {seeded.queue}


def test_stats_carry_the_brokers_alarms(
    client: TestClient, admin_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.get("/api/v1/stats", headers=auth(VIEWER)).json()["alarms"] == []

    async def alarms() -> list[str]:
        return ["rabbitmq at amqp://guest:***@mq:5672: the server blocks publishing"]

    monkeypatch.setattr(admin_app.kernel.broker, "alarms", alarms)
    body = client.get("/api/v1/stats", headers=auth(VIEWER)).json()
    assert body["alarms"] == ["rabbitmq at amqp://guest:***@mq:5672: the server blocks publishing"]


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    given = client.get("/api/v1/queues", headers=auth(OPS) | {"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    refused = client.get("/api/v1/queues", headers={"X-Request-ID": "trace-9"})
    assert error_of(refused)["request_id"] == "trace-9"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id\twith junk"})
    assert made.headers["X-Request-ID"] != "bad id\twith junk"
    assert len(made.headers["X-Request-ID"]) == 32
    assert made.headers["Server-Timing"].startswith("app;dur=")


def test_revealing_arguments_is_audited(client: TestClient, seeded: Seeded, admin_app: App) -> None:
    listed = client.get("/api/v1/dead-letters", headers=auth(VIEWER)).text
    assert "card-" not in listed
    shown = client.post(f"/api/v1/tasks/{seeded.dead[2]}/reveal", headers=auth(VIEWER))
    assert shown.status_code == 200
    assert shown.json()["args"] == ["card-2"]
    entry = admin_app.admin.audit(limit=1)[0]
    assert (entry.actor, entry.action, entry.ids) == ("viewer", "reveal", [seeded.dead[2]])


def test_schedules_through_the_api_use_the_beats_store(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    h = auth(OPS)
    made = client.post(
        "/api/v1/schedules",
        json={"name": "hourly", "task": seeded.add.name, "cron": "0 * * * *", "args": [1, 2]},
        headers=h,
    )
    assert made.status_code == 201
    assert made.json()["source"] == "stored" and made.json()["next_run"].endswith(":00:00+00:00")
    assert client.post("/api/v1/schedules/hourly/pause", headers=h).status_code == 200
    (info,) = admin_app.schedules.list()
    assert (info.schedule.name, info.schedule.args, info.paused) == ("hourly", (1, 2), True)
    assert client.post("/api/v1/schedules/hourly/resume", headers=h).status_code == 200
    assert admin_app.schedules.list()[0].paused is False
    assert client.delete("/api/v1/schedules/hourly", headers=h).status_code == 200
    assert admin_app.schedules.list() == []
    missing = client.post("/api/v1/schedules/hourly/pause", headers=h)
    assert missing.status_code == 404


def test_the_openapi_document_describes_every_route(client: TestClient) -> None:
    doc = client.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = set()
    for route in client.app.routes:  # type: ignore[attr-defined]
        # A parameter's converter ({queue:path}) is how it is matched, not its name.
        path = re.sub(r":\w+}", "}", getattr(route, "path", ""))
        if path.startswith("/api/") or path in ("/healthz", "/version"):
            served |= {(m, path) for m in route.methods if m != "HEAD"}
    assert described == served
