"""The upload token file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from provisioner.cloud.tokens import (
    ensure_upload_token,
    read_token,
    token_hash,
    token_matches,
)
from provisioner.errors import ConfigError


def test_created_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "registry" / "upload.token"
    ensure_upload_token(path)
    token = read_token(path)
    assert len(token) >= 40 and token.strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ensure_upload_token(path)
    assert read_token(path) == token  # an existing token is never replaced
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    other = tmp_path / "other.token"
    ensure_upload_token(other)
    assert read_token(other) != token


def test_existing_directory_permissions_are_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    ensure_upload_token(tmp_path / "upload.token")
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("content", "text"),
    [(None, "does not exist"), ("", "is empty"), ("two words\n", "single word")],
)
def test_bad_token_files(tmp_path: Path, content: str | None, text: str) -> None:
    path = tmp_path / "upload.token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=text):
        read_token(path)


def test_hash_and_match() -> None:
    assert token_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert token_matches("abc", {"0" * 64, token_hash("abc")})
    assert not token_matches("abd", {token_hash("abc")})
    assert not token_matches("abc", set())
