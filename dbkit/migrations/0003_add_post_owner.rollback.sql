ALTER TABLE posts DROP COLUMN owner_id;
DELETE FROM users WHERE lower(email) = 'legacy-owner@invalid';
