-- Finish post ownership (0003 added the column and NOT VALID constraints). Succeeds on a posts
-- table that already has rows:
--  1. rows written before users existed get a placeholder owner, a login-less account whose
--     password hash '!' can never match, so NOT NULL can hold;
--  2. VALIDATE scans under SHARE UPDATE EXCLUSIVE (reads and writes continue);
--  3. SET NOT NULL then skips its scan because a validated CHECK proves it (PostgreSQL 12+),
--     and the helper check is dropped.
INSERT INTO users (email, password_hash)
SELECT 'legacy-owner@invalid', '!'
WHERE EXISTS (SELECT 1 FROM posts WHERE owner_id IS NULL)
  AND NOT EXISTS (SELECT 1 FROM users WHERE lower(email) = 'legacy-owner@invalid');

UPDATE posts
   SET owner_id = (SELECT id FROM users WHERE lower(email) = 'legacy-owner@invalid')
 WHERE owner_id IS NULL;

ALTER TABLE posts VALIDATE CONSTRAINT posts_owner_id_not_null;
ALTER TABLE posts VALIDATE CONSTRAINT posts_owner_id_fkey;
ALTER TABLE posts ALTER COLUMN owner_id SET NOT NULL;
ALTER TABLE posts DROP CONSTRAINT posts_owner_id_not_null;
