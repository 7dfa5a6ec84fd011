-- RoleCall schema version 6: EC2 key pairs, and the key an instance was launched with (issue 12).
-- A key pair keeps its public half only: the private key CreateKeyPair makes is returned once
-- and never stored. EC2 key names are case-sensitive, so the name itself is unique per account
-- (no *_lower column). Tags of key pairs are rows of `tags`, keyed by key_pair_id.

CREATE TABLE key_pairs (
    key_pair_id  TEXT PRIMARY KEY,      -- key- and 17 hex characters
    account_id   TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    key_type     TEXT NOT NULL,         -- rsa | ed25519
    fingerprint  TEXT NOT NULL,
    public_key   TEXT NOT NULL,         -- the OpenSSH line: TYPE BASE64 NAME
    created      TEXT NOT NULL,
    UNIQUE (account_id, name)
);

-- The launch's key, copied: the metadata service keeps serving it after the key pair is
-- deleted, as on EC2. Nullable columns: SQLite and PostgreSQL add them without a rewrite.
ALTER TABLE instances ADD COLUMN key_name TEXT;
ALTER TABLE instances ADD COLUMN public_key TEXT;
