-- RoleCall schema version 3: enrolled nodes and the EC2 instances placed on them.

CREATE TABLE nodes (
    name            TEXT PRIMARY KEY,
    certificate_serial TEXT NOT NULL,        -- hex serial of the node's client certificate
    enrolled        TEXT NOT NULL,
    retired         TEXT,                    -- set when the node may no longer connect
    last_contact    TEXT,
    revision        INTEGER NOT NULL         -- bumped whenever an assignment on it changes
);

CREATE TABLE instances (
    instance_id          TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    reservation_id       TEXT NOT NULL,
    image_id             TEXT NOT NULL,
    instance_type        TEXT NOT NULL,
    node_name            TEXT NOT NULL REFERENCES nodes (name),
    netns                TEXT NOT NULL,
    state                TEXT NOT NULL,      -- pending | running | shutting-down | terminated
    launched             TEXT NOT NULL,
    terminated           TEXT,
    private_ip           TEXT NOT NULL,
    http_tokens          TEXT NOT NULL,
    hop_limit            INTEGER NOT NULL,
    http_endpoint        TEXT NOT NULL,
    -- the instance profile association (at most one current, as in EC2)
    association_id       TEXT,
    association_state    TEXT,
    profile_id           TEXT,               -- no FK: a deleted profile leaves history behind
    launch_index         INTEGER NOT NULL
);

CREATE INDEX instances_node ON instances (node_name, state);
CREATE INDEX instances_account ON instances (account_id, instance_id);
CREATE UNIQUE INDEX instances_association ON instances (association_id);
