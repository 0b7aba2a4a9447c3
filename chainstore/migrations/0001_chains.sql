-- Chains and their versions. Every write takes the next store revision from
-- store_meta, whose row lock serializes writers: revisions commit in order, so a
-- watcher that asks for "revision > n" never misses one.
CREATE TABLE IF NOT EXISTS store_meta (
    id BIGINT PRIMARY KEY,
    revision BIGINT NOT NULL
);
INSERT INTO store_meta (id, revision) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS chain_versions (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    document TEXT NOT NULL,
    author TEXT NOT NULL,
    comment TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    revision BIGINT NOT NULL UNIQUE,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS chains (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    deleted BIGINT NOT NULL
);
