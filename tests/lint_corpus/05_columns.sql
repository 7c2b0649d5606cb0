ALTER TABLE accounts ADD COLUMN plan text NOT NULL;
ALTER TABLE accounts ADD COLUMN credits bigint NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN nickname text;
ALTER TABLE accounts ADD COLUMN external_id uuid DEFAULT gen_random_uuid();
ALTER TABLE accounts ADD COLUMN touched_at timestamptz DEFAULT now();
ALTER TABLE invoices ADD COLUMN total_cents bigint GENERATED ALWAYS AS ((total * 100)::bigint) STORED;
ALTER TABLE invoices ALTER COLUMN total TYPE numeric(14, 4);
ALTER TABLE accounts
    ALTER COLUMN email TYPE varchar(320);
