-- What the labeling workflow needs beyond the core entities: skips, adjudicated final labels, gold pairs and
-- editable settings such as the annotation guidelines.

CREATE TABLE skips (
    pair_id BIGINT NOT NULL,
    annotator_id BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (pair_id, annotator_id)
);

CREATE TABLE adjudications (
    pair_id BIGINT PRIMARY KEY,
    admin_id BIGINT NOT NULL,
    choice VARCHAR NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
    note VARCHAR,
    created_at TIMESTAMP NOT NULL
);

-- A gold pair has a known answer; it is mixed into queues unannounced to measure annotator accuracy.
ALTER TABLE pairs ADD COLUMN gold_choice VARCHAR;

CREATE TABLE settings (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
