"""The store a configuration names: SQLite in the state directory, or PostgreSQL by its DSN.

The CLI and `serve` open their store here, never a backend class directly. psycopg is imported
only for ``backend = "postgresql"``: an SQLite controller never loads it.
"""

from __future__ import annotations

from controller.config import ControllerConfig
from controller.store.base import Store


def open_store(config: ControllerConfig) -> Store:
    """The configured store, migrated to this RoleCall's schema (StoreError if it cannot be)."""
    if config.store_backend == "postgresql":
        from controller.store.postgresql import PostgreSQLStore

        if config.store_dsn is None:  # config_from_string refuses this; a hand-made config may not
            raise ValueError("store.dsn: required with store.backend = postgresql")
        return PostgreSQLStore(config.store_dsn, pool_size=config.store_pool_size)
    from controller.store.sqlite import SQLiteStore

    return SQLiteStore(config.database_path)


def store_location(config: ControllerConfig) -> str:
    """Where the configured store is, for messages: a path, or host/port/database/user."""
    if config.store_backend == "postgresql" and config.store_dsn is not None:
        from controller.store.postgresql import describe_dsn

        return describe_dsn(config.store_dsn)
    return str(config.database_path)
