-- 0003: PostgreSQL as a BI contract: profile history, views for BI tools, a read-only role.

-- Settings read by the database itself (BI teams may tune them without touching the job).
CREATE TABLE profilestream_settings (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    description text NOT NULL
);
INSERT INTO profilestream_settings VALUES
    ('history.score_step', '0.05',
     'a history row is written when the score moved at least this much since the last one');

-- Append-only trend data: one row when a profile appears, changes segment, expires, starts a
-- new epoch, or its score moves by at least history.score_step since the last history row.
-- Not one row per event.
CREATE TABLE user_profile_history (
    history_id       bigserial PRIMARY KEY,
    user_id          text NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    as_of            timestamptz NOT NULL,  -- event time of the profile update
    change           text NOT NULL CHECK (change IN ('new', 'segment', 'score', 'expired',
                                                     'new_epoch')),
    profile_epoch_ms bigint NOT NULL,
    profile_version  bigint NOT NULL,
    segment          text NOT NULL,
    previous_segment text,
    score            double precision NOT NULL,
    previous_score   double precision,
    model_version    text NOT NULL,
    expired          boolean NOT NULL
);
CREATE INDEX user_profile_history_as_of_idx ON user_profile_history (as_of);
CREATE INDEX user_profile_history_user_idx ON user_profile_history (user_id, as_of);

-- The score at the user's last history row (maintained by the trigger, not by the job).
ALTER TABLE user_profiles ADD COLUMN history_score double precision;

CREATE FUNCTION record_profile_history(p user_profiles, change text, prev_segment text,
                                       prev_score double precision) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO user_profile_history (user_id, as_of, change, profile_epoch_ms, profile_version,
        segment, previous_segment, score, previous_score, model_version, expired)
    VALUES (p.user_id, to_timestamp(p.as_of_ms / 1000.0), change, p.profile_epoch_ms,
        p.profile_version, p.segment, prev_segment, p.score, prev_score, p.model_version,
        p.expired)
$$;

CREATE OR REPLACE FUNCTION user_profiles_monotonic() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    step double precision;
    change text;
BEGIN
    IF (NEW.profile_epoch_ms, NEW.profile_version) <= (OLD.profile_epoch_ms, OLD.profile_version)
    THEN
        RETURN NULL;  -- an older (or the same) update: keep the row as it is
    END IF;
    NEW.updated_at := now();
    SELECT value::double precision INTO step FROM profilestream_settings
     WHERE key = 'history.score_step';
    change := CASE
        WHEN NEW.profile_epoch_ms <> OLD.profile_epoch_ms THEN 'new_epoch'
        WHEN NEW.expired AND NOT OLD.expired THEN 'expired'
        WHEN NEW.segment <> OLD.segment THEN 'segment'
        WHEN abs(NEW.score - coalesce(OLD.history_score, OLD.score)) >= coalesce(step, 0.05)
            THEN 'score'
    END;
    IF change IS NOT NULL THEN
        NEW.history_score := NEW.score;
        PERFORM record_profile_history(NEW, change, OLD.segment, OLD.history_score);
    ELSE
        NEW.history_score := coalesce(OLD.history_score, OLD.score);
    END IF;
    RETURN NEW;
END
$$;

-- An upsert fires BEFORE INSERT triggers even when it ends up updating, so the 'new' history row
-- is written by an AFTER INSERT trigger, which fires only for rows really inserted.
CREATE FUNCTION user_profiles_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.history_score := NEW.score;
    RETURN NEW;
END
$$;

CREATE FUNCTION user_profiles_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM record_profile_history(NEW, 'new', NULL, NULL);
    RETURN NULL;
END
$$;

CREATE TRIGGER user_profiles_before_insert BEFORE INSERT ON user_profiles
    FOR EACH ROW EXECUTE FUNCTION user_profiles_before_insert();
CREATE TRIGGER user_profiles_after_insert AFTER INSERT ON user_profiles
    FOR EACH ROW EXECUTE FUNCTION user_profiles_after_insert();

-- Views for BI tools (current profiles only: expired ones are excluded).
CREATE VIEW bi_segment_sizes AS
SELECT segment,
       count(*)                             AS profiles,
       avg(score)                           AS avg_score,
       sum(spend_30d)                       AS spend_30d,
       avg(event_count)::double precision   AS avg_events
  FROM user_profiles
 WHERE NOT expired
 GROUP BY segment;

CREATE VIEW bi_score_distribution AS
SELECT least(width_bucket(score, 0, 1, 10), 10) AS bucket,
       (least(width_bucket(score, 0, 1, 10), 10) - 1) / 10.0 AS score_from,
       least(width_bucket(score, 0, 1, 10), 10) / 10.0 AS score_to,
       count(*) AS profiles
  FROM user_profiles
 WHERE NOT expired
 GROUP BY 1, 2, 3;

CREATE VIEW bi_funnel_totals AS
SELECT sum(views)      AS views,
       sum(carts)      AS carts,
       sum(purchases)  AS purchases,
       sum(carts)::double precision / nullif(sum(views), 0)      AS view_to_cart,
       sum(purchases)::double precision / nullif(sum(carts), 0)  AS cart_to_purchase,
       sum(abandoned_carts) AS abandoned_carts,
       count(*)        AS profiles
  FROM user_profiles
 WHERE NOT expired;

CREATE VIEW bi_segment_trend AS
SELECT date_trunc('day', as_of) AS day, segment, count(*) AS entered
  FROM user_profile_history
 WHERE change IN ('new', 'segment', 'new_epoch')
 GROUP BY 1, 2;

-- A role for BI tools: reads profiles, history and the views; writes nothing; never sees the
-- raw dead-letter messages. Roles belong to the server, so create it only once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bi_reader') THEN
        CREATE ROLE bi_reader NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO bi_reader;
GRANT SELECT ON user_profiles, user_profile_history, profilestream_settings, bi_segment_sizes,
    bi_score_distribution, bi_funnel_totals, bi_segment_trend TO bi_reader;
