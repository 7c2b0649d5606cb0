-- The CHECK is added NOT VALID in the same statement: nothing is validated, SET NOT NULL scans.
ALTER TABLE accounts ALTER COLUMN slug SET NOT NULL,
    ADD CONSTRAINT accounts_slug_nn CHECK (slug IS NOT NULL) NOT VALID;
