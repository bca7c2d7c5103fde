"""The PostgreSQL store: several feeders on one database (`--db postgresql://...`)."""

from feeder.store.postgres.migrate import SchemaTooNew
from feeder.store.postgres.store import PostgresStore

URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    """Whether `--db` names a PostgreSQL database (anything else is a SQLite path)."""
    return db.startswith(URL_SCHEMES)


__all__ = ["URL_SCHEMES", "PostgresStore", "SchemaTooNew", "is_postgres_url"]
