-- RoleCall schema version 1: accounts, their keys, roles, role policies, instance profiles, tags.
-- Portable SQL: the same file runs on SQLite and PostgreSQL. Names are unique per account
-- case-insensitively, as in IAM, through the *_lower columns.

CREATE TABLE accounts (
    account_id  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created     TEXT NOT NULL
);

CREATE TABLE access_keys (
    access_key_id      TEXT PRIMARY KEY,
    secret_access_key  TEXT NOT NULL,
    account_id         TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    user_name          TEXT,            -- NULL: the account's root
    status             TEXT NOT NULL,   -- Active | Inactive
    created            TEXT NOT NULL
);

CREATE TABLE roles (
    role_id               TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    name_lower            TEXT NOT NULL,
    path                  TEXT NOT NULL,
    assume_role_policy    TEXT NOT NULL,
    description           TEXT,
    max_session_duration  INTEGER NOT NULL,
    created               TEXT NOT NULL,
    UNIQUE (account_id, name_lower)
);

CREATE TABLE role_policies (
    role_id     TEXT NOT NULL REFERENCES roles (role_id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    name_lower  TEXT NOT NULL,
    document    TEXT NOT NULL,
    PRIMARY KEY (role_id, name_lower)
);

CREATE TABLE instance_profiles (
    profile_id  TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    name_lower  TEXT NOT NULL,
    path        TEXT NOT NULL,
    role_id     TEXT REFERENCES roles (role_id),   -- at most one role, as in IAM
    created     TEXT NOT NULL,
    UNIQUE (account_id, name_lower)
);

CREATE INDEX instance_profiles_role ON instance_profiles (role_id);

-- Tags of any entity (role, instance profile), keyed by its id; keys unique ignoring case.
CREATE TABLE tags (
    entity_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    key_lower  TEXT NOT NULL,
    value      TEXT NOT NULL,
    position   INTEGER NOT NULL,
    PRIMARY KEY (entity_id, key_lower)
);
