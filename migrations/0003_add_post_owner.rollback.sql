ALTER TABLE posts DROP COLUMN owner_id;
