-- RoleCall schema version 9 (SQLite): what several controllers on PostgreSQL share (issue 14).
-- On SQLite the key ring, the node CA, the instance identity and the audit log stay the files
-- they are (one controller); the tables exist so that both backends have one schema and
-- migrate-store can copy them, and stay empty here.

CREATE TABLE shared_state (
    name     TEXT PRIMARY KEY,   -- token-keys, node-ca.key, node-ca.pem, instance-identity.*
    value    TEXT NOT NULL,      -- the file's text (JSON or PEM): secrets among them
    changed  TEXT NOT NULL
);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    time         TEXT NOT NULL,  -- the record's time, ISO 8601 UTC: orders as text
    instance_id  TEXT,
    record       TEXT NOT NULL   -- the record's JSON, as the file's lines hold it; never a secret
);

CREATE INDEX audit_log_time ON audit_log (time);
CREATE INDEX audit_log_instance ON audit_log (instance_id, time);
