-- One vote per (post, user); removing either removes the vote.
CREATE TABLE votes (
    post_id bigint NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (post_id, user_id)
);
-- The primary key serves lookups by post; this one serves "votes by user" and the cascade.
CREATE INDEX votes_user_id_idx ON votes (user_id);
