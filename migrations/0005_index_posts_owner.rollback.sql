-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS posts_owner_id_idx;
