-- transactional: false
-- Built CONCURRENTLY so a live posts table keeps taking writes; that cannot run inside a
-- transaction, hence the directive above (yoyo then runs this file in autocommit).
-- IF NOT EXISTS lets a re-run after an interrupted build succeed.
CREATE INDEX CONCURRENTLY IF NOT EXISTS posts_owner_id_idx ON posts (owner_id);
