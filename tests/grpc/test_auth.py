"""The token file of ``taskflow grpc --token-file``."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskflow.errors import ConfigError
from taskflow.grpc import PermissionDenied, TokenFile, Unauthenticated

ENQUEUE = "/taskflow.v1.WorkerService/EnqueueTasks"
GET = "/taskflow.v1.WorkerService/GetTask"


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_tokens_identify_callers_without_showing_the_token(tmp_path: Path) -> None:
    auth = TokenFile(_file(tmp_path, "# comment\n\nfull-secret-1\nreader-secret-2:read-only\n"))
    writer = auth(ENQUEUE, {"authorization": "Bearer full-secret-1"})
    reader = auth(GET, {"authorization": "bearer reader-secret-2"})
    assert writer.startswith("token:") and "full-secret-1" not in writer
    assert reader.endswith(":read-only") and "reader-secret-2" not in reader
    assert writer != reader
    assert "secret" not in repr(auth)


def test_a_read_only_token_may_only_read(tmp_path: Path) -> None:
    auth = TokenFile(_file(tmp_path, "reader-secret:read-only\n"))
    with pytest.raises(PermissionDenied, match="EnqueueTasks"):
        auth(ENQUEUE, {"authorization": "Bearer reader-secret"})
    assert auth(
        "/taskflow.v1.WorkerService/StreamEvents", {"authorization": "Bearer reader-secret"}
    )


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"authorization": "Bearer"},
        {"authorization": "Basic abc"},
        {"authorization": "Bearer x"},
    ],
)
def test_missing_or_unknown_tokens_are_unauthenticated(
    tmp_path: Path, metadata: dict[str, str]
) -> None:
    auth = TokenFile(_file(tmp_path, "the-token\n"))
    with pytest.raises(Unauthenticated):
        auth(GET, metadata)


def test_an_unusable_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no token"):
        TokenFile(_file(tmp_path, "# only a comment\n"))
    with pytest.raises(ConfigError, match="line 2"):
        TokenFile(_file(tmp_path, "good\ntwo words\n"))
    with pytest.raises(ConfigError, match="No such file"):
        TokenFile(tmp_path / "absent")
