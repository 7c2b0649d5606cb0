-- A new column without a default is all NULL: PostgreSQL marks its inline FOREIGN KEY valid
-- without reading a row of either table (measured). squawk asks for NOT VALID anyway.
ALTER TABLE accounts ADD COLUMN referrer_id bigint REFERENCES accounts (id);
