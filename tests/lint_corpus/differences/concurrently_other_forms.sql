-- PostgreSQL refuses these inside a transaction block too; squawk only knows CREATE INDEX.
DROP INDEX CONCURRENTLY accounts_created_at_idx;
REINDEX INDEX CONCURRENTLY accounts_email_lower_key;
