-- RoleCall schema version 2: IAM users and their inline policies. Access keys already name
-- their user (access_keys.user_name, NULL for the account's root).

CREATE TABLE users (
    user_id     TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    name_lower  TEXT NOT NULL,
    path        TEXT NOT NULL,
    created     TEXT NOT NULL,
    UNIQUE (account_id, name_lower)
);

CREATE TABLE user_policies (
    user_id     TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    name_lower  TEXT NOT NULL,
    document    TEXT NOT NULL,
    PRIMARY KEY (user_id, name_lower)
);

CREATE INDEX access_keys_owner ON access_keys (account_id, user_name);
