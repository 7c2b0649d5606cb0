-- Every post gets an owner, in two steps so a live, populated posts table is never scanned
-- or rewritten while it is locked exclusively (see 0006_require_post_owner for the rest):
--  * the column is added nullable and without a default: a catalog-only change;
--  * NOT NULL is announced as a NOT VALID check and the foreign key as NOT VALID: both hold
--    for new and updated rows at once, without scanning existing ones under this lock.
ALTER TABLE posts ADD COLUMN owner_id bigint;
ALTER TABLE posts ADD CONSTRAINT posts_owner_id_not_null CHECK (owner_id IS NOT NULL) NOT VALID;
ALTER TABLE posts ADD CONSTRAINT posts_owner_id_fkey
    FOREIGN KEY (owner_id) REFERENCES users (id) ON DELETE CASCADE NOT VALID;
