-- RoleCall schema version 4: a node's own instance capacity (issue 16, item 10).
-- NULL: the controller's ec2.node_capacity applies. Portable: SQLite and PostgreSQL both add a
-- nullable column without rewriting the table.

ALTER TABLE nodes ADD COLUMN capacity INTEGER;
