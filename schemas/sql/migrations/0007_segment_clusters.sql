-- 0007: learned shopper segments. Beside the rule-based `segment`, every profile row carries the
-- K-means cluster its features fall in (udfs/clusters.py) and the segmentation that assigned it;
-- a change of cluster is a history event like a change of segment. Rows written before this
-- migration get both on their next update (NULL until then).
ALTER TABLE user_profiles ADD COLUMN cluster_id integer, ADD COLUMN cluster_version text;

ALTER TABLE user_profile_history
    ADD COLUMN cluster_id integer,
    ADD COLUMN previous_cluster_id integer,
    ADD COLUMN cluster_version text;
ALTER TABLE user_profile_history DROP CONSTRAINT user_profile_history_change_check;
ALTER TABLE user_profile_history ADD CONSTRAINT user_profile_history_change_check
    CHECK (change IN ('new', 'segment', 'cluster', 'score', 'expired', 'new_epoch'));

-- Each segmentation the job has served: one row per cluster, as trained (the job registers its
-- segmentation when it starts; the same version is never registered with other content).
CREATE TABLE segment_clusters (
    cluster_version text NOT NULL,
    cluster_id      integer NOT NULL,
    name            text NOT NULL,
    description     text NOT NULL,
    size            bigint NOT NULL,            -- users in the cluster in the training snapshot
    share           double precision NOT NULL,  -- size / all users in the training snapshot
    centroid        jsonb NOT NULL,             -- {feature: the members' mean raw value}
    registered_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_version, cluster_id)
);

CREATE FUNCTION record_profile_history(p user_profiles, change text, prev_segment text,
                                       prev_score double precision, prev_cluster integer)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO user_profile_history (user_id, user_pseudonym, as_of, change, profile_epoch_ms,
        profile_version, segment, previous_segment, score, previous_score, model_version,
        expired, cluster_id, previous_cluster_id, cluster_version)
    VALUES (p.user_id, p.user_pseudonym, to_timestamp(p.as_of_ms / 1000.0), change,
        p.profile_epoch_ms, p.profile_version, p.segment, prev_segment, p.score, prev_score,
        p.model_version, p.expired, p.cluster_id, prev_cluster, p.cluster_version)
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
        -- a row from before this migration (NULL) gaining a cluster is not a move
        WHEN OLD.cluster_id IS NOT NULL AND NEW.cluster_id IS DISTINCT FROM OLD.cluster_id
            THEN 'cluster'
        WHEN abs(NEW.score - coalesce(OLD.history_score, OLD.score)) >= coalesce(step, 0.05)
            THEN 'score'
    END;
    IF change IS NOT NULL THEN
        NEW.history_score := NEW.score;
        PERFORM record_profile_history(NEW, change, OLD.segment, OLD.history_score,
                                       OLD.cluster_id);
    ELSE
        NEW.history_score := coalesce(OLD.history_score, OLD.score);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION user_profiles_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM record_profile_history(NEW, 'new', NULL, NULL, NULL);
    RETURN NULL;
END
$$;

DROP FUNCTION record_profile_history(user_profiles, text, text, double precision);
