-- RoleCall schema version 11 on PostgreSQL: the names and paths of version 10's tables compare
-- and sort by code point, as 0008 made the others do (paging order, migrate-store's checksums).

ALTER TABLE managed_policies ALTER COLUMN name_lower TYPE TEXT COLLATE "C";
ALTER TABLE managed_policies ALTER COLUMN path TYPE TEXT COLLATE "C";
ALTER TABLE iam_groups ALTER COLUMN name_lower TYPE TEXT COLLATE "C";
ALTER TABLE iam_groups ALTER COLUMN path TYPE TEXT COLLATE "C";
ALTER TABLE group_policies ALTER COLUMN name_lower TYPE TEXT COLLATE "C";
