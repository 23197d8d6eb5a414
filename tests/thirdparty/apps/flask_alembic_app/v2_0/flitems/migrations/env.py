"""alembic's environment: the URL comes from the Config that flitems builds (sqlalchemy.url)."""

from alembic import context
from sqlalchemy import create_engine

from flitems.models import Base

engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
