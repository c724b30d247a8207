"""The OpenAPI 3.1 document of the JSON API, built from :data:`~taskflow.admin.api.ENDPOINTS`
so that every endpoint is described and none is described that does not exist."""

from __future__ import annotations

import re
from typing import Any

from .. import __version__
from .api import ENDPOINTS, Endpoint

__all__ = ["openapi_document"]

_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_NSTR = {"type": ["string", "null"]}
_STRS = {"type": "array", "items": _STR}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        doc["required"] = list(required)
    return doc


def _page(item: str) -> dict[str, Any]:
    return _obj(
        {"items": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
         "next_cursor": _NSTR},
        ("items", "next_cursor"),
    )  # fmt: skip


_QUEUE = _obj(
    {"name": _STR, "ready": _INT, "scheduled": _INT, "running": _INT, "dead": _INT,
     "paused": _BOOL},
    ("name", "ready", "scheduled", "running", "dead", "paused"),
)  # fmt: skip
SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {"error": _obj({"code": _STR, "message": _STR, "request_id": _STR},
                       ("code", "message", "request_id"))},
        ("error",),
    ),
    "Object": {"type": "object"},
    "Queue": _QUEUE,
    "QueuePage": _page("Queue"),
    "Task": _obj(
        {"id": _STR, "task": _STR, "queue": _STR, "state": _STR, "status": _NSTR,
         "priority": _INT, "eta": _TIME, "attempts": _INT,
         "error": {"type": ["object", "null"]}, "created_at": _TIME, "started_at": _TIME,
         "finished_at": _TIME, "worker": _NSTR,
         "history": {"type": "array", "items": {"type": "object"}}},
        ("id", "task", "queue", "state"),
    ),
    "TaskPage": _page("Task"),
    "DeadLetter": _obj(
        {"task_id": _STR, "task": _STR, "queue": _STR, "reason": _STR, "error": _NSTR,
         "attempts": _INT, "dead_at": _TIME},
        ("task_id", "task", "queue", "reason"),
    ),
    "DeadLetterPage": _page("DeadLetter"),
    "Worker": _obj({"id": _STR, "hostname": _STR, "pid": _INT, "queues": _STRS,
                    "concurrency": _INT, "running": _STRS, "state": _STR}, ("id", "state")),
    "WorkerPage": _page("Worker"),
    "AuditEntry": _obj({"at": _TIME, "actor": _STR, "action": _STR, "target": _STR,
                        "count": _INT, "ids": _STRS}, ("actor", "action")),
    "AuditPage": _page("AuditEntry"),
    "Schedule": _obj(
        {"name": _STR, "task": _STR, "cron": _NSTR, "every": {"type": ["number", "null"]},
         "queue": _NSTR, "priority": {"type": ["integer", "null"]}, "timezone": _STR,
         "missed": _STR, "source": _STR, "paused": _BOOL, "next_run": _STR},
        ("name", "task", "paused", "next_run"),
    ),
    "SchedulePage": _page("Schedule"),
    "Stats": _obj({"at": _TIME, "queues": {"type": "array"}, "tasks": {"type": "array"},
                   "workers": _INT, "lost_workers": _INT, "totals": {"type": "object"},
                   "rate_1m": {"type": "object"}, "rate_5m": {"type": "object"},
                   "alarms": _STRS},
                  ("at", "queues", "workers")),
    "ReplayReport": _obj({"matched": _INT, "replayed": _INT, "skipped": {"type": "object"},
                          "dry_run": _BOOL, "ids": _STRS}, ("matched", "replayed")),
    "Payload": _obj({"id": _STR, "task": _STR, "args": {"type": "array"},
                     "kwargs": {"type": "object"}}, ("id", "args", "kwargs")),
    "Version": _obj({"version": _STR, "app": _STR}, ("version",)),
    "Health": _obj({"status": _STR}, ("status",)),
    "PurgeRequest": _obj({"scheduled": _BOOL, "dry_run": _BOOL}),
    "RetryRequest": _obj({"ids": _STRS, "dry_run": _BOOL}, ("ids",)),
    "DeadLetterAction": _obj(
        {"queue": _NSTR, "ids": {"type": ["array", "null"], "items": _STR}, "task": _NSTR,
         "reason": _NSTR, "limit": {"type": ["integer", "null"], "minimum": 1},
         "dry_run": _BOOL},
    ),
    "ScheduleRequest": _obj(
        {"name": _STR, "task": _STR, "cron": _NSTR, "every": {"type": ["number", "null"]},
         "queue": _NSTR, "priority": {"type": ["integer", "null"]}, "timezone": _NSTR,
         "missed": {"enum": ["once", "skip"]}, "args": {"type": "array"},
         "kwargs": {"type": "object"}},
        ("name", "task"),
    ),
}  # fmt: skip

_QUERY: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 500},
    "cursor": _STR,
    "state": {"type": "string", "enum": ["ready", "scheduled", "running", "dead"]},
    "queue": _STR,
    "task": _STR,
    "reason": _STR,
    "since": _STR,
}
_ERRORS = {
    401: "No or a wrong bearer token",
    404: "Not found",
    422: "Invalid input",
    503: "The broker or result store did not answer (code unavailable)",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(e: Endpoint) -> dict[str, Any]:
    op_id = re.sub(r"[^A-Za-z0-9]+", "_", f"{e.method.lower()}{e.path}").strip("_")
    params = [
        {"name": n, "in": "path", "required": True, "schema": _STR}
        for n in re.findall(r"{(\w+)}", e.path)
    ] + [{"name": n, "in": "query", "required": False, "schema": _QUERY[n]} for n in e.query]
    errors = dict(_ERRORS)
    if e.changes:
        errors[403] = "The caller is read-only"
        errors[409] = "Conflicts with the current state, or unsupported by the backend"
        errors[500] = (
            "The action took effect, but its audit entry was refused (code "
            "audit_not_written): do not send it again"
        )
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": e.summary,
        "security": [{"bearer": []}],
        "parameters": params,
        "responses": {
            str(e.status): {
                "description": "OK",
                "content": {"application/json": {"schema": _ref(e.response)}},
            },
            **{
                str(code): {
                    "description": text,
                    "content": {"application/json": {"schema": _ref("Error")}},
                }
                for code, text in sorted(errors.items())
            },
        },
    }
    if e.body:
        op["requestBody"] = {
            "required": e.body in ("RetryRequest", "ScheduleRequest"),
            "content": {"application/json": {"schema": _ref(e.body)}},
        }
    return op


def openapi_document() -> dict[str, Any]:
    """The document served at ``/api/v1/openapi.json``."""
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e)
    paths["/healthz"] = {
        "get": {
            "operationId": "get_healthz",
            "summary": "Liveness (no authentication)",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": _ref("Health")}},
                }
            },
        }
    }
    paths["/api/v1/openapi.json"] = {
        "get": {
            "operationId": "get_openapi",
            "summary": "This document (no authentication)",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": _ref("Object")}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "taskflow admin API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
