-- RoleCall schema version 7: the node an instance was moved from (ModifyInstancePlacement,
-- issue 13). Role credentials that node issued before the move keep working in the guest,
-- which carries them across a live migration; see docs/decisions.md. NULL: never moved.
-- A nullable column: SQLite and PostgreSQL add it without rewriting the table.

ALTER TABLE instances ADD COLUMN previous_node TEXT;
