-- 0008: learned shopper segments for BI. The profile and history views gain the cluster columns
-- (as new last columns: existing queries are unaffected); views answer "what kinds of shoppers do
-- we have" (bi_cluster_sizes, bi_segment_clusters), "how do they move between kinds"
-- (bi_cluster_flows) and "how do the clusters relate to the rule-based segments"
-- (bi_cluster_segments). All readable by bi_reader, none exposes user_id.

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

-- Each segmentation as trained: names, descriptions, training sizes, centroids.
CREATE VIEW bi_segment_clusters AS
SELECT cluster_version, cluster_id, name, description, size, share, centroid, registered_at
  FROM segment_clusters;

-- Cluster sizes now (live profiles) beside their size at training, per segmentation. Every
-- registered cluster appears (profiles 0 when none is in it now), and so does a cluster live
-- rows name but segment_clusters does not (name NULL). Profiles without a cluster yet are left
-- out. share: of the version's live profiles with a cluster.
CREATE VIEW bi_cluster_sizes AS
WITH live AS (
    SELECT cluster_version, cluster_id, count(*) AS profiles, avg(score) AS avg_score,
           avg(spend_30d) AS avg_spend_30d
      FROM user_profiles
     WHERE NOT expired AND cluster_id IS NOT NULL
     GROUP BY cluster_version, cluster_id
), sizes AS (
    SELECT coalesce(l.cluster_version, c.cluster_version) AS cluster_version,
           coalesce(l.cluster_id, c.cluster_id) AS cluster_id,
           c.name, c.description, coalesce(l.profiles, 0) AS profiles, l.avg_score,
           l.avg_spend_30d, c.size AS training_size, c.share AS training_share
      FROM live l
      FULL JOIN segment_clusters c
        ON c.cluster_version = l.cluster_version AND c.cluster_id = l.cluster_id
)
SELECT cluster_version, cluster_id, name AS cluster_name, description, profiles,
       profiles::double precision
           / nullif(sum(profiles) OVER (PARTITION BY cluster_version), 0)::double precision
           AS share,
       avg_score, avg_spend_30d, training_size, training_share
  FROM sizes;

-- Moves between clusters per day (of event time): history rows whose cluster changed within
-- one segmentation. The trigger writes one history row per update, a segment change first, so a
-- move on the same update as a segment change is a 'segment' row with previous_cluster_id:
-- both kinds count. Not moves: a profile's first cluster ('new', or a row from before 0007
-- gaining one), a re-assignment by another cluster_version, expiry and a return after it
-- ('expired', 'new_epoch': a returning shopper starts a new profile).
CREATE VIEW bi_cluster_flows AS
WITH moves AS (
    SELECT date_trunc('day', as_of) AS day, cluster_version, previous_cluster_id, cluster_id,
           count(*) AS moves
      FROM user_profile_history
     WHERE change IN ('cluster', 'segment')
       AND previous_cluster_id <> cluster_id
       AND previous_cluster_version = cluster_version
     GROUP BY 1, 2, 3, 4
)
SELECT m.day, m.cluster_version, m.previous_cluster_id AS from_cluster_id,
       f.name AS from_cluster_name, m.cluster_id AS to_cluster_id, t.name AS to_cluster_name,
       m.moves
  FROM moves m
  LEFT JOIN segment_clusters f
    ON f.cluster_version = m.cluster_version AND f.cluster_id = m.previous_cluster_id
  LEFT JOIN segment_clusters t
    ON t.cluster_version = m.cluster_version AND t.cluster_id = m.cluster_id;

-- The moves only, by segmentation and time, with the columns the flows view reads: the view
-- reads this small index alone (an index-only scan) instead of the whole history, which is
-- mostly 'score' and 'new' rows and grows without bound. Measured on 1.2 M history rows (162 MB)
-- with 3 % moves: the index takes 2 MB; the whole view in 0.03 s instead of 0.29 s without it
-- (0.26 s without the INCLUDE columns, which leave a heap read per move), the last 10 days of
-- one segmentation in 0.011 s instead of 0.26 s. The predicate is part of the view's, so the
-- planner can use the index with or without a filter on cluster_version or day; it leaves out
-- the view's `previous_cluster_version = cluster_version` on purpose: given `cluster_version =
-- 'x'` the planner rewrites that clause to `previous_cluster_version = 'x'` and could no longer
-- prove the index applies. History rows that are not moves only evaluate the predicate. No
-- index on user_profiles' clusters: with a handful of clusters each holds a large share of the
-- profiles, so a cluster filter reads most of the table anyway, and every index slows the job's
-- upserts.
CREATE INDEX user_profile_history_cluster_moves_idx
    ON user_profile_history (cluster_version, as_of)
       INCLUDE (previous_cluster_id, cluster_id, previous_cluster_version)
 WHERE change IN ('cluster', 'segment') AND previous_cluster_id <> cluster_id;

-- Learned clusters against rule-based segments (live profiles with a cluster): how many of a
-- cluster's profiles are in each segment. share_of_cluster: of the cluster's profiles;
-- share_of_segment: of the segment's profiles in this segmentation; lift: share_of_cluster over
-- the segment's share of all the version's profiles (1: as common as anywhere, 2: twice).
CREATE VIEW bi_cluster_segments AS
WITH counts AS (
    SELECT cluster_version, cluster_id, segment, count(*) AS profiles
      FROM user_profiles
     WHERE NOT expired AND cluster_id IS NOT NULL
     GROUP BY cluster_version, cluster_id, segment
), totals AS (
    SELECT cluster_version, cluster_id, segment, profiles,
           sum(profiles) OVER (PARTITION BY cluster_version, cluster_id) AS in_cluster,
           sum(profiles) OVER (PARTITION BY cluster_version, segment) AS in_segment,
           sum(profiles) OVER (PARTITION BY cluster_version) AS in_version
      FROM counts
)
SELECT t.cluster_version, t.cluster_id, c.name AS cluster_name, t.segment, t.profiles,
       t.profiles::double precision / t.in_cluster::double precision AS share_of_cluster,
       t.profiles::double precision / t.in_segment::double precision AS share_of_segment,
       (t.profiles * t.in_version)::double precision
           / (t.in_cluster * t.in_segment)::double precision AS lift
  FROM totals t
  LEFT JOIN segment_clusters c
    ON c.cluster_version = t.cluster_version AND c.cluster_id = t.cluster_id;

GRANT SELECT ON bi_segment_clusters, bi_cluster_sizes, bi_cluster_flows, bi_cluster_segments
    TO bi_reader;
