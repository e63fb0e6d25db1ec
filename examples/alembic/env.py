"""Alembic's env.py with guardeddb: migrations run as their own identity,
under a policy that lets that identity, and only it, change the schema.

Copy into your Alembic directory; ``DATABASE_URL`` is any SQLAlchemy URL
(``postgresql+psycopg://...``, ``mysql+pymysql://...``, ``sqlite:///...``).
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine

import guardeddb
from guardeddb.integrations.sqlalchemy import guard_engine

URL = os.environ["DATABASE_URL"]
POLICY = Path(__file__).with_name("migrations.yaml")
#: Who runs migrations, in the spans and the audit trail, and what the policy matches.
MIGRATIONS = guardeddb.Identity(user="migrations", agent="alembic")


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: prints the SQL, touches no database."""
    context.configure(url=URL, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = guard_engine(create_engine(URL), policy=POLICY, identity=MIGRATIONS)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
