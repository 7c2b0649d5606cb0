-- Validating a constraint added by an earlier migration, alone, is the safe second step:
-- SHARE UPDATE EXCLUSIVE only, reads and writes go on during the scan.
ALTER TABLE invoices VALIDATE CONSTRAINT invoices_total_positive_nv;
