-- Sign-in sessions of the labeling app, and at most one lease per annotator.

-- A session is what a browser's sign-in cookie stands for. The cookie holds a random secret; only its sha256 is stored
-- here, so a copy of the database signs nobody in. Signing out, a new token and disabling the account delete the rows.
CREATE TABLE sessions (
    id VARCHAR PRIMARY KEY,                 -- sha256 hex of the secret in the browser's cookie
    annotator_id BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL           -- pushed forward while the session is used, never past a maximum lifetime
);

-- One live lease per annotator: whatever pair an annotator is given replaces the one they held (a closed tab or a
-- second tab can no longer hold a pair besides the one on screen). Older databases keep each annotator's latest lease.
CREATE TABLE leases_by_annotator (
    annotator_id BIGINT PRIMARY KEY,
    pair_id BIGINT NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
INSERT INTO leases_by_annotator
SELECT annotator_id, arg_max(pair_id, expires_at), max(expires_at) FROM leases GROUP BY annotator_id;
DROP TABLE leases;
ALTER TABLE leases_by_annotator RENAME TO leases;
