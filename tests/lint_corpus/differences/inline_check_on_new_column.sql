-- A CHECK added together with a column is verified by a full scan under ACCESS EXCLUSIVE.
ALTER TABLE invoices ADD COLUMN discount numeric CHECK (discount >= 0);
