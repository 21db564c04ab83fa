"""Alembic environment: runs on the connection the Database hands over (no alembic.ini needed)."""

from alembic import context

from jupyter_sessions.repository.orm import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only migrations run from code are supported
    raise RuntimeError("run migrations through jupyter_sessions.repository.Database.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
