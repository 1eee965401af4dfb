"""What every command needs: the settings and a database engine, built once per invocation."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import typer
from sqlalchemy.engine import Engine

from provisioner.db.engine import create_schema, make_engine
from provisioner.settings import Settings, load_settings


@dataclass
class CliContext:
    config: Path | None
    _settings: Settings | None = field(default=None, repr=False)

    @cached_property
    def settings(self) -> Settings:
        return self._settings or load_settings(self.config)

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.settings.db_url)
        create_schema(engine)
        return engine

    @property
    def actor(self) -> str:
        """Who is acting, for the audit trail (OS user until issue 6 brings accounts)."""
        return f"operator:{getpass.getuser()}"

    @property
    def admin(self) -> str:
        """The actor of CA and registry administration."""
        return f"admin:{getpass.getuser()}"


def ctx_of(ctx: typer.Context) -> CliContext:
    obj = ctx.obj
    assert isinstance(obj, CliContext)
    return obj
