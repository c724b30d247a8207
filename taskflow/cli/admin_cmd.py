"""``taskflow admin``: serve the admin web service (API and pages) with uvicorn.

It refuses to start without ``--token-file``: every network service taskflow offers needs
authentication. It binds to 127.0.0.1 unless ``--host`` says otherwise, and serves HTTPS
with ``--tls-cert`` and ``--tls-key`` (the session cookie is then marked ``Secure``).
"""

from __future__ import annotations

import click

from ..errors import ConfigError
from .common import CliError, load
from .options import app_option

__all__ = ["admin"]


@click.command("admin")
@app_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="Access tokens, one 'name:token' or 'name:token:read-only' per line (required).",
)
@click.option("--read-only", is_flag=True, help="Every caller may look but change nothing.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate (HTTPS).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key (HTTPS).")
def admin(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None,
    host: str,
    port: int,
    token_file: str | None,
    read_only: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Serve the admin web service: JSON API under /api/v1/ and pages."""
    if not app_spec:
        raise CliError("no app given: pass -A MODULE[:ATTR] or set TASKFLOW_APP")
    if not token_file:
        raise CliError(
            "taskflow admin needs --token-file (lines of name:token[:read-only]): "
            "it never serves without authentication"
        )
    if bool(tls_cert) != bool(tls_key):
        raise CliError("give both --tls-cert and --tls-key, or neither")
    try:
        import uvicorn

        from ..admin import TokenStore, create_app
    except ImportError:
        raise CliError(
            "taskflow admin needs its extra: pip install 'taskflow-queue[admin]'"
        ) from None
    try:
        tokens = TokenStore.from_file(token_file)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    app = load(app_spec)
    try:
        web = create_app(app, tokens=tokens, read_only=read_only, secure_cookies=bool(tls_cert))
        scheme = "https" if tls_cert else "http"
        click.echo(f"taskflow admin for {app.kernel.settings.name!r} on {scheme}://{host}:{port}/")
        uvicorn.run(
            web,
            host=host,
            port=port,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            log_level="warning",
            access_log=False,
        )
    finally:
        app.close()
