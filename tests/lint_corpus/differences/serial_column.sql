-- bigserial means DEFAULT nextval(...), a volatile default: the table is rewritten.
ALTER TABLE accounts ADD COLUMN seq bigserial;
