-- NOT VALID then VALIDATE in one transaction: the scan runs while the ADD's lock is held.
ALTER TABLE invoices ADD CONSTRAINT invoices_total_small CHECK (total < 1000) NOT VALID;
ALTER TABLE invoices VALIDATE CONSTRAINT invoices_total_small;
