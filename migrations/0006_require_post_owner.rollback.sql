-- Back to the state after 0003: nullable column, NOT VALID constraints, no placeholder owner.
-- The foreign key goes first so removing the placeholder does not cascade to its posts.
ALTER TABLE posts DROP CONSTRAINT posts_owner_id_fkey;
ALTER TABLE posts ALTER COLUMN owner_id DROP NOT NULL;
UPDATE posts SET owner_id = NULL
 WHERE owner_id = (SELECT id FROM users WHERE lower(email) = 'legacy-owner@invalid');
DELETE FROM users WHERE lower(email) = 'legacy-owner@invalid';
ALTER TABLE posts ADD CONSTRAINT posts_owner_id_not_null CHECK (owner_id IS NOT NULL) NOT VALID;
ALTER TABLE posts ADD CONSTRAINT posts_owner_id_fkey
    FOREIGN KEY (owner_id) REFERENCES users (id) ON DELETE CASCADE NOT VALID;
