-- One statement, no transactional: false header: yoyo still wraps it in a transaction and
-- PostgreSQL refuses it. squawk assumes a one-statement file runs outside a transaction.
CREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (email);
