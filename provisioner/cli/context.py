"""What every command needs: the settings, a database engine and who is acting, built once
per invocation.

Who is acting: the user whose token is in ``--token-file`` / ``$PROVISIONER_TOKEN_FILE``
(never a token on the command line). Until the first user exists (a fresh install) the
CLI acts as the local bootstrap admin ``admin:<OS user>``, which is how the first admin is
made (``provisioner users add``); from then on every command needs a token. The first user
must be an admin (:func:`provisioner.auth.users.add_user` refuses anyone else), so the
bootstrap admin only ends once a real admin exists. It never comes back, even if every admin
is later lost: "no users" is a state nobody can recreate, whereas "no live admin" could be
brought about on purpose to get an unaccountable admin; the way back in is ``users
recover-admin`` (root and the factory token's SO PIN, audited). The CLI runs
where the database is, so roles here are accountability (who did what, refusals audited),
not a wall against someone who can open the database directly — that is what the signed
audit checkpoints are for.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import typer
from sqlalchemy.engine import Engine

from provisioner.auth import users
from provisioner.auth.roles import Role
from provisioner.db.engine import create_schema, make_engine
from provisioner.errors import AuthenticationError, ConfigError
from provisioner.private_files import check_database, check_token_file
from provisioner.settings import Settings, load_settings


@dataclass
class CliContext:
    config: Path | None
    token_file: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)
    _principal: users.Principal | None = field(default=None, repr=False)

    @cached_property
    def settings(self) -> Settings:
        return self._settings or load_settings(self.config)

    @cached_property
    def engine(self) -> Engine:
        if self.settings.role == "station":
            raise ConfigError(
                "this PC is a station (role = station): it holds no database and no user "
                "accounts; run this command on the line server"
            )
        # A database other users can read leaks the users, token hashes and the whole
        # audit trail: refused before it is opened (SQLite only; PostgreSQL has no file).
        check_database(self.settings.db_url, self.settings.var)
        engine = make_engine(self.settings.db_url)
        create_schema(engine)
        return engine

    def require(self, action: str) -> users.Principal:
        """Authenticate (once per invocation) and authorise ``action``; a refusal is
        audited and raised. Returns who is acting."""
        who = self._authenticate()
        users.authorize(self.engine, who, action, via="cli")
        return who

    def _authenticate(self) -> users.Principal:
        if self._principal is not None:
            return self._principal
        if self.token_file is not None:
            check_token_file(self.token_file)
            who = users.authenticate(self.engine, users.read_token_file(self.token_file))
            # The user's first command of the UTC day is the sign-in; later ones append
            # nothing, so an auditor's reads do not grow the trail they read.
            users.record_login(self.engine, who, "cli")
        elif users.has_users(self.engine):
            raise AuthenticationError(
                "this installation has user accounts: pass --token-file FILE or set "
                "PROVISIONER_TOKEN_FILE (an admin creates tokens with `provisioner users`; "
                "no admin left: root runs `provisioner users recover-admin`)"
            )
        else:
            who = users.Principal(getpass.getuser(), Role.ADMIN)
        self._principal = who
        return who

    @property
    def actor(self) -> str:
        """Who acts, for the audit trail (after :meth:`require`)."""
        return self._authenticate().actor

    @property
    def admin(self) -> str:
        """The actor of CA and registry administration (after :meth:`require`)."""
        return self._authenticate().actor


def ctx_of(ctx: typer.Context) -> CliContext:
    obj = ctx.obj
    assert isinstance(obj, CliContext)
    return obj
