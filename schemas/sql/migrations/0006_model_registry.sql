-- 0006: the model registry. `profilestream model publish DIR` inserts a version (its files'
-- content: a cluster's workers do not share the publisher's filesystem); every running job polls
-- this table, switches to the newest version that was not refused after checking it against its
-- own feature contract, and records the outcome here. `profilestream model list` reads it.
--
-- state moves: pending -> serving -> retired (a newer version started serving),
--              pending -> refused (a job's check failed: refused_reason says why),
--              pending -> retired (a newer version started serving before any job took this one).
-- serving_since is set once, when the first job (or parallel subtask) scored with the version.
CREATE TABLE model_registry (
    version        text PRIMARY KEY,                          -- metadata.json "version"
    seq            bigint GENERATED ALWAYS AS IDENTITY UNIQUE, -- publish order: newest serves
    name           text NOT NULL,                             -- metadata.json "name"
    model_txt      text NOT NULL,                             -- model.txt (LightGBM text format)
    metadata_json  text NOT NULL,                             -- metadata.json, byte for byte
    sha256         text NOT NULL,    -- SHA-256 of model.txt, a NUL byte, then metadata.json
    published_at   timestamptz NOT NULL DEFAULT now(),
    published_by   text NOT NULL DEFAULT current_user,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'serving', 'refused', 'retired')),
    refused_reason text,
    serving_since  timestamptz,
    retired_at     timestamptz,
    CHECK ((state = 'refused') = (refused_reason IS NOT NULL)),
    CHECK (metadata_json::jsonb IS NOT NULL)
);

-- What BI tools and status views read: everything but the model file.
CREATE VIEW bi_model_versions AS
SELECT version, seq, name, state, refused_reason, published_at, published_by, serving_since,
       retired_at, sha256, metadata_json::jsonb AS metadata
  FROM model_registry;

GRANT SELECT ON bi_model_versions TO bi_reader;
