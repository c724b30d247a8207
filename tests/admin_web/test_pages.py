"""Pages over a login session: cookie flags, CSRF on every form, the read-only role, tokens
kept hashed, and the command line that refuses to serve without tokens."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from taskflow import App
from taskflow.admin import TokenStore, create_app
from taskflow.cli.main import cli
from taskflow.errors import BrokerError, ConfigError
from taskflow.operations import Admin

from .conftest import OPS, VIEWER, Seeded


def login(client: TestClient, token: str) -> str:
    """Log in through the form; the session's CSRF token (read from a page)."""
    form = client.get("/login").text
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert login_csrf is not None
    response = client.post(
        "/login",
        data={"token": token, "csrf": login_csrf.group(1), "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = client.get("/").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return csrf.group(1)


def test_pages_need_a_login(client: TestClient) -> None:
    for path in ("/", "/dead-letters", "/schedules", "/workers", "/audit"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")
    wrong = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', wrong.text)
    assert token is not None
    refused = client.post("/login", data={"token": "nope", "csrf": token.group(1)})
    assert refused.status_code == 401 and "not valid" in refused.text


def test_session_cookie_is_httponly_and_strict(client: TestClient) -> None:
    form = client.get("/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    response = client.post(
        "/login", data={"token": OPS, "csrf": csrf.group(1)}, follow_redirects=False
    )
    cookie = response.headers["set-cookie"]
    assert "taskflow_session=" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie


def test_cookies_are_secure_behind_tls(admin_app: App, seeded: Seeded, token_file: Path) -> None:
    web = create_app(admin_app, tokens=token_file, secure_cookies=True)
    with TestClient(web, base_url="https://127.0.0.1") as tls:
        form = tls.get("/login")
        assert "Secure" in form.headers["set-cookie"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        done = tls.post("/login", data={"token": OPS, "csrf": csrf.group(1)},
                        follow_redirects=False)  # fmt: skip
        assert "Secure" in done.headers["set-cookie"]


def test_every_form_post_needs_the_sessions_csrf_token(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    csrf = login(client, OPS)
    posts = [
        (f"/queues/{seeded.queue}/pause", {}),
        (f"/tasks/{seeded.waiting[0]}/cancel", {}),
        (f"/tasks/{seeded.dead[0]}/reveal", {}),
        ("/dead-letters", {"action": "replay", "scope": "all"}),
        ("/schedules", {"name": "n", "task": seeded.add.name, "kind": "every", "every": "5"}),
        ("/logout", {}),
    ]
    for path, data in posts:
        for bad in ({}, {"csrf": "wrong"}, {"csrf": csrf[:-1]}):
            response = client.post(path, data=data | bad, follow_redirects=False)
            assert response.status_code == 403, (path, bad, response.text)
    assert admin_app.admin.paused() == set()
    assert len(admin_app.admin.dead_letters().items) == 4
    assert admin_app.admin.audit() == []
    ok = client.post(f"/queues/{seeded.queue}/pause", data={"csrf": csrf},
                     follow_redirects=False)  # fmt: skip
    assert ok.status_code == 303
    assert admin_app.admin.paused() == {seeded.queue}
    assert admin_app.admin.audit(limit=1)[0].actor == "ops"


def test_pages_and_forms_of_a_queue_and_task_whose_names_hold_a_slash(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    seeded.add.apply_async(args=(1, 2), queue="emails/high", task_id="order/42")
    csrf = login(client, OPS)
    overview = client.get("/").text
    assert 'href="/queues/emails/high"' in overview
    queue = client.get("/queues/emails/high")
    assert queue.status_code == 200 and 'href="/tasks/order/42"' in queue.text
    task = client.get("/tasks/order/42")
    assert task.status_code == 200 and "emails/high" in task.text
    paused = client.post("/queues/emails/high/pause", data={"csrf": csrf}, follow_redirects=False)
    assert paused.status_code == 303
    assert admin_app.admin.paused() == {"emails/high"}


def test_a_form_action_whose_audit_is_refused_says_it_took_effect(
    client: TestClient, seeded: Seeded, admin_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    csrf = login(client, OPS)

    async def refused(entry: dict[str, Any], *, retention: float) -> None:
        raise BrokerError("OOM command not allowed when used memory > 'maxmemory'")

    monkeypatch.setattr(admin_app.kernel.results, "add_audit", refused)
    page = client.post(f"/queues/{seeded.queue}/pause", data={"csrf": csrf})
    assert page.status_code == 500
    assert "took effect and is not undone" in page.text
    assert admin_app.admin.paused() == {seeded.queue}


def test_the_overview_leads_with_the_brokers_alarms(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    login(client, VIEWER)
    assert 'data-testid="alarms"' not in client.get("/").text

    async def alarms(self: Any) -> list[str]:
        return ["redis at redis://:***@cache:6379/0: 97% of its maxmemory in use"]

    monkeypatch.setattr(Admin, "aalarms", alarms)
    page = client.get("/").text
    assert 'data-testid="alarms"' in page and 'role="alert"' in page
    assert "97% of its maxmemory in use" in page


def test_the_stylesheet_is_served_from_a_tree_of_links_and_nothing_outside_it(
    admin_app: App, token_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editable install links each package file to the source tree: the pages' own
    files are served all the same, and a path out of the folder is not."""
    import taskflow.admin as admin_package

    real = admin_package._STATIC
    links = tmp_path / "static"
    links.mkdir()
    for name in ("admin.css", "admin.js"):
        (links / name).symlink_to(real / name)
    (tmp_path / "secret.txt").write_text("not for the web")
    monkeypatch.setattr(admin_package, "_STATIC", links)
    web = create_app(admin_app, tokens=TokenStore.from_file(token_file))
    with TestClient(web, base_url="http://127.0.0.1") as linked:
        css = linked.get("/static/admin.css")
        assert css.status_code == 200
        assert css.content == (real / "admin.css").read_bytes()
        assert linked.get("/static/admin.js").status_code == 200
        for path in ("/static/../secret.txt", "/static/%2e%2e/secret.txt"):
            response = linked.get(path)
            assert response.status_code == 404 and b"not for the web" not in response.content


def test_a_read_only_session_sees_pages_but_changes_nothing(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    csrf = login(client, VIEWER)
    for path in ("/", f"/queues/{seeded.queue}?state=dead", f"/tasks/{seeded.dead[0]}",
                 "/dead-letters", "/schedules", "/workers", "/audit"):  # fmt: skip
        page = client.get(path)
        assert page.status_code == 200, path
        assert "Pause queue" not in page.text and "Replay selected" not in page.text
    for path, data in [
        (f"/queues/{seeded.queue}/pause", {}),
        ("/dead-letters", {"action": "discard", "scope": "all"}),
        (f"/tasks/{seeded.waiting[0]}/cancel", {}),
    ]:
        response = client.post(path, data=data | {"csrf": csrf}, follow_redirects=False)
        assert response.status_code == 403
    assert admin_app.admin.paused() == set()
    assert len(admin_app.admin.dead_letters().items) == 4


def test_pages_never_show_arguments_until_revealed(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    csrf = login(client, OPS)
    for path in (f"/tasks/{seeded.dead[0]}", "/dead-letters", f"/queues/{seeded.queue}?state=dead"):
        assert "card-0" not in client.get(path).text
    shown = client.post(f"/tasks/{seeded.dead[0]}/reveal", data={"csrf": csrf})
    assert shown.status_code == 200 and "card-0" in shown.text
    entry = admin_app.admin.audit(limit=1)[0]
    assert (entry.action, entry.actor, entry.ids) == ("reveal", "ops", [seeded.dead[0]])


def test_replay_all_matching_asks_with_the_count_first(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    csrf = login(client, OPS)
    confirm = client.get(f"/dead-letters/confirm?action=replay&task={seeded.fail_name}")
    assert "This will replay <strong>4</strong> dead letters" in confirm.text
    assert admin_app.admin.dead_letters().items != []  # asking changed nothing
    done = client.post("/dead-letters", data={"csrf": csrf, "scope": "all", "action": "replay",
                                              "task": seeded.fail_name})  # fmt: skip
    assert "Replayed 4 of 4 dead letters." in done.text
    assert admin_app.admin.dead_letters().items == []


def test_pages_show_secrets_masked(tmp_path: Path, token_file: Path) -> None:
    app = App("masked", broker="redis://:hunter2@127.0.0.1:1/0")
    try:
        web = create_app(app, tokens=token_file)
        with TestClient(web) as client:
            page = client.get("/login").text
            assert "hunter2" not in page and "redis://:***@127.0.0.1:1/0" in page
    finally:
        app.close()


def test_token_file_format_and_hashing(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\nalice:s3cret\nbob:other:read-only\n")
    store = TokenStore.from_file(path)
    alice, bob = store.check("s3cret"), store.check("other")
    assert alice is not None and (alice.name, alice.read_only) == ("alice", False)
    assert bob is not None and (bob.name, bob.read_only) == ("bob", True)
    assert store.check("s3cre") is None and store.check("") is None
    assert "s3cret" not in repr(vars(store))  # only digests are kept
    path.write_text("alice:s3cret\nbob:other:admin\n")
    with pytest.raises(ConfigError, match="line 2") as caught:
        TokenStore.from_file(path)
    assert "other" not in str(caught.value)
    # The name is the audit trail's actor, and goes into log lines.
    path.write_text("alice:s3cret\nb\tob:other\n")
    with pytest.raises(ConfigError, match=r"line 2: a token's name must be printable") as caught:
        TokenStore.from_file(path)
    assert "other" not in str(caught.value)


def test_the_command_refuses_to_serve_without_tokens(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["admin", "-A", "tests.integration.sqlite_worker_app:app"])
    assert result.exit_code != 0
    assert "--token-file" in result.output
    half = CliRunner().invoke(
        cli, ["admin", "-A", "x:app", "--token-file", str(tmp_path / "t"), "--tls-cert", "c.pem"]
    )
    assert half.exit_code != 0 and "--tls-key" in half.output
