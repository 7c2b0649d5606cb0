-- lower() is immutable: PostgreSQL 11+ stores the default once, no rewrite.
ALTER TABLE accounts ADD COLUMN region text DEFAULT lower('EU');
