"""The stored tree that appends build equals the RFC 6962 tree of the same leaves."""

from __future__ import annotations

from sqlalchemy import text

from provisioner.audit import chain, merkle
from provisioner.audit.chain import entry_of
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent


def test_appends_store_exactly_the_completed_subtrees(db_url: str) -> None:
    engine = make_engine(db_url)
    create_schema(engine)
    leaves = []
    expected: dict[tuple[int, int], bytes] = {}
    frontier = merkle.Frontier()
    for i in range(70):
        with transaction(engine) as s:  # one transaction each, as the workers append
            ev = chain.append(s, "test.event", actor="station:line1", payload={"i": i})
            leaf = merkle.leaf_hash(entry_of(ev).encode())
        leaves.append(leaf)
        frontier, nodes = frontier.append(leaf)
        expected.update(nodes)
    with engine.connect() as c:
        stored = {(lv, ix): bytes(h) for lv, ix, h in c.execute(text("SELECT * FROM audit_node"))}
        assert c.execute(text("SELECT count(*) FROM audit_event")).scalar() == 70
    assert stored == expected
    assert frontier.root() == merkle.root_of(leaves)
    with transaction(engine) as s:
        assert s.get(AuditEvent, 70) is not None
