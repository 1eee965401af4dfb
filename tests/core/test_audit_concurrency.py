"""Several processes appending at once (as the workers do) never fork the chain."""

from __future__ import annotations

import multiprocessing as mp

from sqlalchemy import func
from sqlmodel import select

from provisioner.audit import chain
from provisioner.audit.verify import verify_log
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent

PROCS, EACH = 4, 25


def _writer(url: str, who: int) -> None:
    engine = make_engine(url)
    for i in range(EACH):
        with transaction(engine) as s:
            chain.append(s, "test.concurrent", actor=f"proc{who}", payload={"i": i})
    engine.dispose()


def test_concurrent_appenders_keep_one_chain(db_url: str) -> None:
    engine = make_engine(db_url)
    create_schema(engine)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db_url, n)) for n in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with transaction(engine) as s:
        assert s.exec(select(func.count()).select_from(AuditEvent)).one() == PROCS * EACH
        res = verify_log(s, None)
    assert res.ok, res.reason
    assert res.events == PROCS * EACH
