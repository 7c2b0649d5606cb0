ALTER TABLE invoices ADD CONSTRAINT invoices_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id);
ALTER TABLE invoices ADD CONSTRAINT invoices_account_fk_nv FOREIGN KEY (account_id)
    REFERENCES accounts (id) NOT VALID;
ALTER TABLE invoices ADD CONSTRAINT invoices_total_positive CHECK (total > 0);
ALTER TABLE invoices ADD CONSTRAINT invoices_total_positive_nv CHECK (total > 0) NOT VALID;
ALTER TABLE accounts ADD CONSTRAINT accounts_email_unique UNIQUE (email);
ALTER TABLE accounts ADD CONSTRAINT accounts_email_uq UNIQUE USING INDEX accounts_email_uidx;
ALTER TABLE accounts ADD COLUMN slug text UNIQUE;
