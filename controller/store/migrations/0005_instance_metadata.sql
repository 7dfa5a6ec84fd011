-- RoleCall schema version 5: what an instance's metadata service serves beyond IAM (issue 12).
-- Every column is nullable: an instance launched before this version has none of it, and its
-- metadata service leaves those items out. Portable: SQLite and PostgreSQL both add nullable
-- columns without rewriting the table.

ALTER TABLE instances ADD COLUMN user_data TEXT;          -- base64, as RunInstances took it
ALTER TABLE instances ADD COLUMN mac TEXT;                -- the primary interface's MAC address
ALTER TABLE instances ADD COLUMN interface_id TEXT;       -- eni-…
ALTER TABLE instances ADD COLUMN subnet TEXT;             -- the CIDR its address came from
ALTER TABLE instances ADD COLUMN security_groups TEXT;    -- JSON list of names
ALTER TABLE instances ADD COLUMN metadata_tags TEXT;      -- InstanceMetadataTags: enabled | disabled
-- The signed instance identity document: its exact bytes and the three signatures served.
ALTER TABLE instances ADD COLUMN identity_document TEXT;
ALTER TABLE instances ADD COLUMN identity_signature TEXT;
ALTER TABLE instances ADD COLUMN identity_pkcs7 TEXT;
ALTER TABLE instances ADD COLUMN identity_rsa2048 TEXT;

-- RunInstances' ClientToken, and a digest of the rest of its request (IdempotentParameterMismatch).
ALTER TABLE instances ADD COLUMN client_token TEXT;
ALTER TABLE instances ADD COLUMN request_digest TEXT;

-- A node's subnet (a CIDR) for the addresses of the instances placed on it; NULL: the
-- controller's [ec2] subnet.
ALTER TABLE nodes ADD COLUMN subnet TEXT;

-- The addresses in use: an instance's MAC and private address are unique among the instances
-- that are not terminated. Instances from before this version have hashed link-local addresses
-- that may repeat, so the index covers only rows with a MAC (every new instance).
CREATE UNIQUE INDEX instances_live_mac ON instances (mac)
    WHERE mac IS NOT NULL AND state != 'terminated';
CREATE INDEX instances_client_token ON instances (account_id, client_token)
    WHERE client_token IS NOT NULL;
CREATE UNIQUE INDEX instances_live_address ON instances (subnet, private_ip)
    WHERE subnet IS NOT NULL AND state != 'terminated';
