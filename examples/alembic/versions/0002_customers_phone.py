"""Add customers.phone and a first customer.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("phone", sa.String(40)))
    op.execute(
        "INSERT INTO customers (id, name, email, phone) "
        "VALUES (1, 'Ada Lovelace', 'ada@example.com', '+44 20 7946 0958')"
    )


def downgrade() -> None:
    op.execute("DELETE FROM customers WHERE id = 1")
    op.drop_column("customers", "phone")
