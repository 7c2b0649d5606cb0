-- A constraint added NOT VALID by an earlier migration, validated after another change to the
-- same table in this transaction: the scan runs under the ACCESS EXCLUSIVE lock that the ADD
-- COLUMN took (reads and writes wait). squawk judges each statement on its own.
ALTER TABLE invoices ADD COLUMN note text;
ALTER TABLE invoices VALIDATE CONSTRAINT invoices_total_positive_nv;
