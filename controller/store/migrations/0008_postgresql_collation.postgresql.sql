-- RoleCall schema version 8 on PostgreSQL: names compare and sort by code point, as on SQLite.
-- A database's default collation follows its locale (en_US.UTF-8 sorts "a-b" after "ab"), so the
-- order of ListRoles and friends, and the `name_lower > ?` paging markers, would differ from the
-- embedded store's; COLLATE "C" makes the two backends agree (and migrate-store's checksums).

ALTER TABLE users ALTER COLUMN name_lower TYPE TEXT COLLATE "C";
ALTER TABLE users ALTER COLUMN path TYPE TEXT COLLATE "C";
ALTER TABLE user_policies ALTER COLUMN name_lower TYPE TEXT COLLATE "C";
ALTER TABLE roles ALTER COLUMN name_lower TYPE TEXT COLLATE "C";
ALTER TABLE roles ALTER COLUMN path TYPE TEXT COLLATE "C";
ALTER TABLE role_policies ALTER COLUMN name_lower TYPE TEXT COLLATE "C";
ALTER TABLE instance_profiles ALTER COLUMN name_lower TYPE TEXT COLLATE "C";
ALTER TABLE instance_profiles ALTER COLUMN path TYPE TEXT COLLATE "C";
ALTER TABLE tags ALTER COLUMN key_lower TYPE TEXT COLLATE "C";
