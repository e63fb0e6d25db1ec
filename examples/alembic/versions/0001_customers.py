"""Create customers.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(200)),
    )
    op.create_index("customers_email", "customers", ["email"])


def downgrade() -> None:
    op.drop_index("customers_email", "customers")
    op.drop_table("customers")
