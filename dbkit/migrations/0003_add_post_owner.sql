-- Every post gets an owner. Written to succeed on a posts table that already has rows and to
-- keep locks short on a live one:
--  1. add the column nullable (no rewrite, no default to backfill at lock time);
--  2. give rows written before users existed a placeholder owner (a login-less account whose
--     password hash '!' can never match), so NOT NULL can hold;
--  3. NOT NULL via a NOT VALID check validated separately (PostgreSQL 12+ then skips the scan
--     under ACCESS EXCLUSIVE), and the foreign key NOT VALID + VALIDATE for the same reason.
ALTER TABLE posts ADD COLUMN owner_id bigint;

INSERT INTO users (email, password_hash)
SELECT 'legacy-owner@invalid', '!'
WHERE EXISTS (SELECT 1 FROM posts WHERE owner_id IS NULL)
  AND NOT EXISTS (SELECT 1 FROM users WHERE lower(email) = 'legacy-owner@invalid');

UPDATE posts
   SET owner_id = (SELECT id FROM users WHERE lower(email) = 'legacy-owner@invalid')
 WHERE owner_id IS NULL;

ALTER TABLE posts ADD CONSTRAINT posts_owner_id_not_null CHECK (owner_id IS NOT NULL) NOT VALID;
ALTER TABLE posts VALIDATE CONSTRAINT posts_owner_id_not_null;
ALTER TABLE posts ALTER COLUMN owner_id SET NOT NULL;
ALTER TABLE posts DROP CONSTRAINT posts_owner_id_not_null;

ALTER TABLE posts ADD CONSTRAINT posts_owner_id_fkey
    FOREIGN KEY (owner_id) REFERENCES users (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE posts VALIDATE CONSTRAINT posts_owner_id_fkey;
