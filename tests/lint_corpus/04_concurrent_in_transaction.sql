-- Forgot the transactional: false header: PostgreSQL refuses CONCURRENTLY inside a transaction.
ALTER TABLE accounts ADD COLUMN last_login timestamptz;
CREATE INDEX CONCURRENTLY accounts_last_login_idx ON accounts (last_login);
