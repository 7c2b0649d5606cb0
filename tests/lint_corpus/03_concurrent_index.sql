-- transactional: false
-- The safe way: CONCURRENTLY, outside a transaction.
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_created_at_idx ON accounts (created_at);
