DROP TABLE IF EXISTS legacy_sessions;
ALTER TABLE accounts DROP COLUMN nickname;
ALTER TABLE invoices RENAME TO bills;
ALTER TABLE accounts RENAME COLUMN email TO email_address;
DROP INDEX invoices_total_idx;
