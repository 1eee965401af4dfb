"""A private SoftHSM2 configuration, so each station (and each test) has its own tokens.

SoftHSM reads ``$SOFTHSM2_CONF`` when the module is initialised (C_Initialize), also when it
is loaded through p11-kit's proxy; set it before opening the module."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SOFTHSM2_CONF"


def write_conf(conf_path: Path, token_dir: Path) -> Path:
    """Create the token directory (0700) and a softhsm2.conf pointing at it (idempotent)."""
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(token_dir, 0o700)
    conf_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = (
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    if not conf_path.exists() or conf_path.read_text() != text:
        conf_path.write_text(text)
    return conf_path


def use_conf(conf_path: Path) -> None:
    """Point this process (and the children it starts) at ``conf_path``."""
    os.environ[ENV_VAR] = str(conf_path)
