-- Indexes on tables that earlier migrations created.
CREATE INDEX accounts_created_at_idx ON accounts (created_at);
CREATE UNIQUE INDEX accounts_email_lower_key
    ON accounts (lower(email));
CREATE INDEX IF NOT EXISTS invoices_total_idx ON invoices USING btree (total DESC);
CREATE UNIQUE INDEX accounts_email_uidx ON accounts (email);
