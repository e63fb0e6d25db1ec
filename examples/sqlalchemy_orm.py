"""A small SQLAlchemy ORM app on SQLite, guarded: an identity, a masked read, a blocked DELETE.

Run: python examples/sqlalchemy_orm.py   (needs the ``sqlalchemy`` extra)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import guardeddb
from guardeddb.integrations.sqlalchemy import guard_engine
from guardeddb.testing import capture_spans


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    email: Mapped[str]
    card_number: Mapped[str]


POLICY = {
    "version": 1,
    "extends": ["agent-safe"],  # no DDL, no UPDATE/DELETE without WHERE, ...
    "masking": {
        "rules": [
            {"columns": ["customers.email"], "operator": "email"},
            {"columns": ["customers.card_number"], "operator": "last4"},
        ],
        "detectors": "all",
        "unmask": {"roles": ["compliance"]},
    },
}

with tempfile.TemporaryDirectory() as tmp:
    engine = sa.create_engine(f"sqlite:///{Path(tmp) / 'shop.db'}")
    # The application owns the schema and its data, before the agent gets the engine.
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(
            Customer(
                id=42, name="Ada Lovelace", email="ada@example.com", card_number="4111111111111111"
            )
        )
        session.commit()

    with capture_spans() as cap:
        guard_engine(engine, policy=POLICY, tracer_provider=cap.tracer_provider)
        with (
            guardeddb.identity(user="alice@example.com", agent="support-bot", roles={"support"}),
            Session(engine) as session,
        ):
            ada = session.scalars(sa.select(Customer).where(Customer.id == 42)).one()
            # Ada Lovelace a***@example.com ************1111
            print(ada.name, ada.email, ada.card_number)
            try:
                session.execute(sa.delete(Customer))
            except sa.exc.ProgrammingError as exc:
                assert isinstance(exc.orig, guardeddb.QueryBlocked)
                print(exc.orig)  # query blocked by rule 'write-needs-where': ...
    engine.dispose()

for span in cap.spans:
    attrs = dict(span.attributes or {})
    print(span.name, attrs.get("enduser.id"), attrs.get("guardeddb.decision.action"))
