"""``taskflow grpc``: serve ``taskflow.v1.WorkerService`` for an app (docs/grpc.md).

Every call needs a bearer token from ``--token-file`` unless ``--insecure-no-auth`` is
given. Stops cleanly (exit 0) on SIGTERM or SIGINT.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError, TaskflowError
from .common import CliError, CliRuntimeError, load, logging_setup
from .options import app_option, log_format_option, loglevel_option

__all__ = ["grpc_command"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("grpc")
@app_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=50051, show_default=True)
@click.option(
    "--token-file",
    type=_FILE,
    default=None,
    help="Bearer tokens, one per line; 'TOKEN:read-only' may only read.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve without authentication (needed when no --token-file is given).",
)
@click.option("--tls-cert", type=_FILE, default=None, help="Server certificate (PEM).")
@click.option("--tls-key", type=_FILE, default=None, help="Server private key (PEM).")
@click.option(
    "--tls-client-ca",
    type=_FILE,
    default=None,
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--stream-buffer",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Events buffered per StreamEvents call unless the client asks for another size.",
)
@loglevel_option
@log_format_option
def grpc_command(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None,
    host: str,
    port: int,
    token_file: Path | None,
    insecure_no_auth: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    stream_buffer: int,
    loglevel: str,
    log_format: str,
) -> None:
    """Serve the gRPC API of an app until SIGTERM or SIGINT."""
    if not app_spec:
        raise CliError("no app given: pass -A MODULE[:ATTR] or set TASKFLOW_APP")
    if token_file is None and not insecure_no_auth:
        raise CliError("no --token-file given: every call needs a token (or --insecure-no-auth)")
    if (tls_cert is None) != (tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise CliError("--tls-client-ca needs --tls-cert and --tls-key")
    try:
        from ..grpc import GrpcServer, TlsFiles, TokenFile, serve
    except ImportError as exc:
        raise CliError(str(exc)) from None
    with logging_setup(loglevel, log_format.lower()) as configure:
        app = load(app_spec)
        configure()
        try:
            auth = TokenFile(token_file) if token_file is not None else None
            tls = TlsFiles(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None

            def ready(server: GrpcServer) -> None:
                click.echo(f"taskflow grpc: listening on {server.address}", err=True)

            serve(
                app,
                host=host,
                port=port,
                auth=auth,
                insecure_no_auth=insecure_no_auth,
                tls=tls,
                stream_buffer=stream_buffer,
                on_ready=ready,
            )
        except ConfigError as exc:
            raise CliError(str(exc)) from None
        except (TaskflowError, OSError, TimeoutError) as exc:
            raise CliRuntimeError(str(exc) or type(exc).__name__) from None
        finally:
            app.close()
