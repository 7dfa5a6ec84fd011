-- RoleCall schema version 10: IAM as infrastructure-as-code uses it (issue 15). Customer-managed
-- policies and their versions, attachments of managed policies to roles, users and groups,
-- groups with their members and inline policies, permissions boundaries, when each role was
-- last used, and each account's instance metadata defaults.

CREATE TABLE managed_policies (
    policy_id       TEXT PRIMARY KEY,             -- ANPA...
    account_id      TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    name_lower      TEXT NOT NULL,
    path            TEXT NOT NULL,
    description     TEXT,
    default_version INTEGER NOT NULL,             -- N of "vN"
    next_version    INTEGER NOT NULL,             -- version numbers are never reused
    created         TEXT NOT NULL,
    updated         TEXT NOT NULL,                -- when the default version last changed
    UNIQUE (account_id, name_lower)
);

CREATE TABLE managed_policy_versions (
    policy_id  TEXT NOT NULL REFERENCES managed_policies (policy_id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    document   TEXT NOT NULL,
    created    TEXT NOT NULL,
    PRIMARY KEY (policy_id, version)
);

-- A managed policy attached to a role, user or group. policy_id is the customer-managed
-- policy's; NULL for an AWS-managed one, which lives in the operator's directory, not here.
CREATE TABLE policy_attachments (
    entity_id    TEXT NOT NULL,                   -- a role_id, user_id or group_id
    entity_kind  TEXT NOT NULL,                   -- role | user | group
    account_id   TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    policy_arn   TEXT NOT NULL,
    policy_id    TEXT REFERENCES managed_policies (policy_id),
    attached     INTEGER NOT NULL,                -- order of attachment
    PRIMARY KEY (entity_id, policy_arn)
);

CREATE INDEX policy_attachments_policy ON policy_attachments (policy_arn);
CREATE INDEX policy_attachments_account ON policy_attachments (account_id, policy_arn);

CREATE TABLE iam_groups (
    group_id    TEXT PRIMARY KEY,                 -- AGPA...
    account_id  TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    name_lower  TEXT NOT NULL,
    path        TEXT NOT NULL,
    created     TEXT NOT NULL,
    UNIQUE (account_id, name_lower)
);

CREATE TABLE group_members (
    group_id  TEXT NOT NULL REFERENCES iam_groups (group_id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);

CREATE INDEX group_members_user ON group_members (user_id);

CREATE TABLE group_policies (
    group_id    TEXT NOT NULL REFERENCES iam_groups (group_id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    name_lower  TEXT NOT NULL,
    document    TEXT NOT NULL,
    PRIMARY KEY (group_id, name_lower)
);

-- The ARN of the managed policy that bounds a role's or user's permissions (NULL: none).
ALTER TABLE roles ADD COLUMN permissions_boundary TEXT;
ALTER TABLE users ADD COLUMN permissions_boundary TEXT;

-- RoleLastUsed: written in batches, at most once per role per flush (controller.iam.lastused).
ALTER TABLE roles ADD COLUMN last_used TEXT;
ALTER TABLE roles ADD COLUMN last_used_region TEXT;

-- EC2 ModifyInstanceMetadataDefaults: NULL in a column means "no preference".
CREATE TABLE instance_metadata_defaults (
    account_id     TEXT PRIMARY KEY REFERENCES accounts (account_id) ON DELETE CASCADE,
    http_tokens    TEXT,                          -- optional | required
    hop_limit      INTEGER,                       -- 1..64
    http_endpoint  TEXT,                          -- enabled | disabled
    metadata_tags  TEXT,                          -- enabled | disabled
    changed        TEXT NOT NULL
);
