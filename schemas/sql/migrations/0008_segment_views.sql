-- 0008: learned shopper segments for BI. The profile and history views gain the cluster columns
-- (as new last columns: existing queries are unaffected). All readable by bi_reader, none
-- exposes user_id.

-- A move is between two clusters of one segmentation: cluster ids of different versions name
-- unrelated clusters. History therefore also records the version the previous cluster belonged
-- to, and a profile re-assigned by a newer segmentation (the job started with another
-- cluster_version) is not a 'cluster' change, just as a row from before 0007 (NULL) gaining a
-- cluster is not; later rows carry the new version. Rows written before this migration have
-- previous_cluster_version NULL (the job wrote no clusters before 0008 was released).
ALTER TABLE user_profile_history ADD COLUMN previous_cluster_version text;

CREATE FUNCTION record_profile_history(p user_profiles, change text, prev_segment text,
                                       prev_score double precision, prev_cluster integer,
                                       prev_cluster_version text)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO user_profile_history (user_id, user_pseudonym, as_of, change, profile_epoch_ms,
        profile_version, segment, previous_segment, score, previous_score, model_version,
        expired, cluster_id, previous_cluster_id, cluster_version, previous_cluster_version)
    VALUES (p.user_id, p.user_pseudonym, to_timestamp(p.as_of_ms / 1000.0), change,
        p.profile_epoch_ms, p.profile_version, p.segment, prev_segment, p.score, prev_score,
        p.model_version, p.expired, p.cluster_id, prev_cluster, p.cluster_version,
        prev_cluster_version)
$$;

CREATE OR REPLACE FUNCTION user_profiles_monotonic() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    step double precision;
    change text;
BEGIN
    IF current_setting('profilestream.maintenance', true) = 'on' THEN
        RETURN NEW;
    END IF;
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
        -- a move within one segmentation: a row gaining its first cluster (NULL before) or
        -- re-assigned by another cluster_version is not a move
        WHEN OLD.cluster_id IS NOT NULL AND NEW.cluster_version = OLD.cluster_version
             AND NEW.cluster_id IS DISTINCT FROM OLD.cluster_id
            THEN 'cluster'
        WHEN abs(NEW.score - coalesce(OLD.history_score, OLD.score)) >= coalesce(step, 0.05)
            THEN 'score'
    END;
    IF change IS NOT NULL THEN
        NEW.history_score := NEW.score;
        PERFORM record_profile_history(NEW, change, OLD.segment, OLD.history_score,
                                       OLD.cluster_id, OLD.cluster_version);
    ELSE
        NEW.history_score := coalesce(OLD.history_score, OLD.score);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION user_profiles_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM record_profile_history(NEW, 'new', NULL, NULL, NULL, NULL);
    RETURN NULL;
END
$$;

DROP FUNCTION record_profile_history(user_profiles, text, text, double precision, integer);

-- The profile and history views with the cluster columns last.
CREATE OR REPLACE VIEW bi_user_profiles AS
SELECT user_pseudonym, segment, score, model_version, expired, profile_epoch_ms,
       profile_version, as_of, event_count, views, carts, removes, favorites, purchases,
       searches, views_24h, carts_24h, purchases_30d, spend_micros, spend, spend_30d_micros,
       spend_30d, other_purchases, abandoned_carts, first_event_at, last_event_at,
       last_purchase_at, activity_score, distinct_categories, top_category, sessions, features,
       updated_at, score_reasons, cluster_id, cluster_version
  FROM user_profiles;

CREATE OR REPLACE VIEW bi_user_profile_history AS
SELECT history_id, user_pseudonym, recorded_at, as_of, change, profile_epoch_ms,
       profile_version, segment, previous_segment, score, previous_score, model_version, expired,
       cluster_id, cluster_version, previous_cluster_id, previous_cluster_version
  FROM user_profile_history;
