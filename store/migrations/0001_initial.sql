-- Core entities of the preference loop. Times are naive UTC written by the Python API (no ICU dependency).
-- No FOREIGN KEY clauses: DuckDB checks them eagerly on UPDATE (implemented as delete + insert), which would reject
-- ordinary status updates of referenced rows; the Python API checks references instead.

CREATE SEQUENCE prompts_id_seq;
CREATE TABLE prompts (
    id BIGINT PRIMARY KEY DEFAULT nextval('prompts_id_seq'),
    messages VARCHAR NOT NULL,              -- JSON list of {"role", "content"}; the last turn is the user's
    source VARCHAR NOT NULL,                -- where it came from: "seed", a file name, "import:<name>"
    content_hash VARCHAR NOT NULL UNIQUE,   -- sha256 of the canonical JSON of messages
    split VARCHAR NOT NULL CHECK (split IN ('train', 'heldout')),  -- fixed at insert, never changed
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE rounds (
    id INTEGER PRIMARY KEY,                 -- 0 is the base model's round
    checkpoint_id BIGINT NOT NULL,          -- the checkpoint that generates this round's candidates
    overlap_target INTEGER NOT NULL DEFAULT 1 CHECK (overlap_target >= 1),
    created_at TIMESTAMP NOT NULL
);

CREATE SEQUENCE checkpoints_id_seq;
CREATE TABLE checkpoints (
    id BIGINT PRIMARY KEY DEFAULT nextval('checkpoints_id_seq'),
    round_id INTEGER,                       -- the round whose labels trained it (NULL for the base model)
    kind VARCHAR NOT NULL CHECK (kind IN ('base', 'sft', 'dpo', 'reward', 'ppo', 'rloo', 'merged')),
    base_model VARCHAR NOT NULL,            -- HF id or local path of the full model under the adapter
    adapter_path VARCHAR,                   -- LoRA adapter directory, NULL for a plain model
    parent_id BIGINT,                       -- checkpoint it was trained from
    export_id BIGINT,                       -- export it was trained on
    config VARCHAR NOT NULL DEFAULT '{}',   -- JSON of the training config
    created_at TIMESTAMP NOT NULL
);

CREATE SEQUENCE responses_id_seq;
CREATE TABLE responses (
    id BIGINT PRIMARY KEY DEFAULT nextval('responses_id_seq'),
    prompt_id BIGINT NOT NULL,
    checkpoint_id BIGINT,                   -- NULL for imported responses
    text VARCHAR NOT NULL,
    sampling VARCHAR NOT NULL DEFAULT '{}', -- JSON: temperature, top_p, max_new_tokens, seed
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason VARCHAR NOT NULL CHECK (finish_reason IN ('stop', 'length', 'imported')),
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX responses_prompt_idx ON responses (prompt_id);

CREATE SEQUENCE pairs_id_seq;
CREATE TABLE pairs (
    id BIGINT PRIMARY KEY DEFAULT nextval('pairs_id_seq'),
    prompt_id BIGINT NOT NULL,
    response_a_id BIGINT NOT NULL,
    response_b_id BIGINT NOT NULL,
    round_id INTEGER,                       -- NULL for imported pairs
    strategy VARCHAR NOT NULL,              -- 'samples', 'vs-previous' or 'import'
    overlap_target INTEGER NOT NULL DEFAULT 1 CHECK (overlap_target >= 1),
    status VARCHAR NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'complete', 'retired')),
    content_hash VARCHAR NOT NULL UNIQUE,   -- prompt and both texts: an identical pair is never stored twice
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX pairs_round_idx ON pairs (round_id);

CREATE SEQUENCE annotators_id_seq;
CREATE TABLE annotators (
    id BIGINT PRIMARY KEY DEFAULT nextval('annotators_id_seq'),
    name VARCHAR NOT NULL UNIQUE,
    role VARCHAR NOT NULL CHECK (role IN ('annotator', 'admin', 'import', 'simulated')),
    token_hash VARCHAR,                     -- sha256 of the sign-in token; NULL for import and simulated annotators
    disabled BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMP NOT NULL
);

CREATE SEQUENCE judgments_id_seq;
CREATE TABLE judgments (
    id BIGINT PRIMARY KEY DEFAULT nextval('judgments_id_seq'),
    pair_id BIGINT NOT NULL,
    annotator_id BIGINT NOT NULL,
    choice VARCHAR NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),  -- in terms of the stored a/b
    strength VARCHAR CHECK (strength IS NULL OR strength IN ('slight', 'clear')),
    rationale VARCHAR,
    shown_left VARCHAR CHECK (shown_left IS NULL OR shown_left IN ('a', 'b')),  -- which response was on the left
    seconds_spent DOUBLE,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (pair_id, annotator_id)          -- exactly one per pair and annotator; a resubmit updates it
);

CREATE TABLE leases (
    pair_id BIGINT NOT NULL,
    annotator_id BIGINT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    PRIMARY KEY (pair_id, annotator_id)
);

CREATE SEQUENCE exports_id_seq;
CREATE TABLE exports (
    id BIGINT PRIMARY KEY DEFAULT nextval('exports_id_seq'),
    name VARCHAR NOT NULL UNIQUE,
    path VARCHAR NOT NULL,
    round_id INTEGER,                       -- NULL when every round was exported
    policy VARCHAR NOT NULL DEFAULT '{}',   -- JSON of the export policy
    counts VARCHAR NOT NULL DEFAULT '{}',   -- JSON: rows per split, dropped per reason
    created_at TIMESTAMP NOT NULL
);

CREATE SEQUENCE training_runs_id_seq;
CREATE TABLE training_runs (
    id BIGINT PRIMARY KEY DEFAULT nextval('training_runs_id_seq'),
    kind VARCHAR NOT NULL,
    round_id INTEGER,
    export_id BIGINT,
    parent_checkpoint_id BIGINT,
    checkpoint_id BIGINT,                   -- set when the run finishes
    output_dir VARCHAR NOT NULL,
    config VARCHAR NOT NULL DEFAULT '{}',
    metrics VARCHAR NOT NULL DEFAULT '{}',
    status VARCHAR NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    error VARCHAR,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP
);

CREATE SEQUENCE eval_results_id_seq;
CREATE TABLE eval_results (
    id BIGINT PRIMARY KEY DEFAULT nextval('eval_results_id_seq'),
    checkpoint_id BIGINT NOT NULL,
    round_id INTEGER,
    metric VARCHAR NOT NULL,
    value DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    n INTEGER,
    details VARCHAR NOT NULL DEFAULT '{}',
    created_at TIMESTAMP NOT NULL
);
