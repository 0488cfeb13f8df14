"""Alembic environment. Run through `storage.db.upgrade`, which hands over an open connection.

There is no alembic.ini: `storage.db.alembic_config` builds the configuration in code, so
the migrations ship inside the package and work from any working directory.
"""
from alembic import context

from storage.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through storage.db.upgrade(), which provides the connection")

# render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
