"""agents registered through the admin API; scaling groups with their scheduling policy

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 08:30:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('registered', sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column('spec', sa.JSON(), nullable=False, server_default='{}'))
    op.create_table(
        'scaling_groups',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('ordering', sa.String(length=16), nullable=False),
        sa.Column('placement', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('scaling_groups')
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_column('spec')
        batch_op.drop_column('registered')
