"""kernel logs kept after destroy, and images converted from sessions

kernel_logs: the tail of each kernel's output, saved at teardown. user_images: converted images
and their owners (allowed to them, counted against max_images).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 08:20:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('kernel_logs',
    sa.Column('session_id', sa.String(length=36), nullable=False),
    sa.Column('kernel', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('dropped_bytes', sa.Integer(), nullable=False),
    sa.Column('saved_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', 'kernel')
    )
    op.create_table('user_images',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('owner_access_key', sa.String(length=64), nullable=False),
    sa.Column('session_id', sa.String(length=36), nullable=True),
    sa.Column('image_id', sa.String(length=80), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=True),
    sa.Column('pushed_to', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_access_key'], ['keypairs.access_key'], ),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('user_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_images_owner_access_key'), ['owner_access_key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('user_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_user_images_owner_access_key'))
    op.drop_table('user_images')
    op.drop_table('kernel_logs')
