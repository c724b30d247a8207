"""The options of ``taskflow worker``'s Prometheus endpoint, checked before anything starts.

The endpoint binds to loopback unless ``--metrics-host`` says otherwise, asks every scrape
for the bearer token of ``--metrics-token-file`` (the file Prometheus's ``authorization:
credentials_file:`` reads) when given one, and serves HTTPS with ``--metrics-tls-cert`` and
``--metrics-tls-key``. Bound beyond loopback it needs the token, or to be told
``--metrics-insecure-no-auth``: ``taskflow worker --metrics-port 9100`` alone serves this
machine only. This module imports no OTel: the
endpoint itself (:mod:`taskflow.cli.metrics`) is loaded only when a port is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from .._tls import read_secret
from ..errors import ConfigError

__all__ = ["METRICS_DIR_ENV", "MetricsServing", "metrics_options", "metrics_serving"]

F = TypeVar("F", bound=Callable[..., Any])

TOKEN_FILE_ENV = "TASKFLOW_METRICS_TOKEN_FILE"
# Set by a supervisor for its processes: the directory where each notes its loopback port
# (and where the supervisor keeps the token those ports ask for).
METRICS_DIR_ENV = "TASKFLOW_METRICS_DIR"
_FILE = click.Path(dir_okay=False)


@dataclass(frozen=True)
class MetricsServing:
    """Where and how the endpoint serves (the token is never shown in a repr)."""

    port: int
    host: str = "127.0.0.1"
    token: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None


def metrics_options(fn: F) -> F:
    """``--metrics-port`` and the options of the endpoint it starts."""
    options = [
        click.option(
            "--metrics-port",
            "metrics_port",
            type=click.IntRange(min=0, max=65535),
            default=None,
            metavar="PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (one port for all "
            "processes; needs the otel extra).",
        ),
        click.option(
            "--metrics-host",
            "metrics_host",
            default="127.0.0.1",
            show_default=True,
            metavar="HOST",
            help="Address the metrics endpoint binds to (beyond loopback it needs "
            "--metrics-token-file).",
        ),
        click.option(
            "--metrics-token-file",
            "metrics_token_file",
            type=_FILE,
            default=None,
            envvar=TOKEN_FILE_ENV,
            help="A file holding the bearer token every scrape must send (one line); "
            f"or ${TOKEN_FILE_ENV}.",
        ),
        click.option(
            "--metrics-insecure-no-auth",
            "metrics_no_auth",
            is_flag=True,
            help="Serve the metrics beyond loopback without a token.",
        ),
        click.option(
            "--metrics-tls-cert",
            "metrics_tls_cert",
            type=_FILE,
            default=None,
            help="PEM certificate: serve the metrics over HTTPS.",
        ),
        click.option(
            "--metrics-tls-key",
            "metrics_tls_key",
            type=_FILE,
            default=None,
            help="PEM private key of --metrics-tls-cert.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def metrics_serving(  # noqa: PLR0917 -- one argument per option
    port: int | None,
    host: str,
    token_file: str | None,
    no_auth: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> MetricsServing | None:
    """The endpoint these options ask for (``None`` without a port), or a ``UsageError``
    naming the option at fault. The token is read here, so a bad file stops the worker
    before it starts."""
    if port is None:
        given = [
            name
            for name, value in (
                ("--metrics-host", host != "127.0.0.1"),
                ("--metrics-token-file", token_file is not None),
                ("--metrics-insecure-no-auth", no_auth),
                ("--metrics-tls-cert", tls_cert is not None),
                ("--metrics-tls-key", tls_key is not None),
            )
            if value
        ]
        if given:
            raise click.UsageError(f"{given[0]} needs --metrics-port")
        return None
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--metrics-tls-cert and --metrics-tls-key go together")
    if token_file is not None and no_auth:
        raise click.UsageError(
            "--metrics-token-file and --metrics-insecure-no-auth exclude each other"
        )
    if token_file is None and not no_auth and not _loopback(host):
        raise click.UsageError(
            f"--metrics-host {host} serves beyond this machine: give --metrics-token-file "
            "(a bearer token every scrape sends), or --metrics-insecure-no-auth"
        )
    token = None
    if token_file is not None:
        try:
            token = read_secret(os.fspath(token_file), "--metrics-token-file", "taskflow worker")
        except OSError as exc:
            raise click.UsageError(
                f"--metrics-token-file {token_file!r} cannot be read: {exc.strerror or exc}"
            ) from None
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    return MetricsServing(port, host, token, tls_cert, tls_key)


def _loopback(host: str) -> bool:
    import ipaddress  # only with --metrics-port: not on every start-up

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False
