-- 0004: data protection. BI reads pseudonyms only; a shopper can be erased; a dead letter that was
-- erased never comes back in a replay.

-- The keyed hash (HMAC-SHA256 with the secret in PROFILESTREAM_PSEUDONYM_KEY[_FILE]) the job
-- writes with every profile row; BI tools identify users by it. Rows written before this
-- migration get it on their next update, or from `profilestream db rotate-pseudonyms`.
ALTER TABLE user_profiles ADD COLUMN user_pseudonym text;
ALTER TABLE user_profile_history ADD COLUMN user_pseudonym text;
CREATE INDEX user_profiles_pseudonym_idx ON user_profiles (user_pseudonym);
CREATE INDEX user_profile_history_pseudonym_idx ON user_profile_history (user_pseudonym, as_of);
INSERT INTO profilestream_settings VALUES
    ('pseudonym.key_id', '',
     'fingerprint of the pseudonym key the rows were written with (set by the job, not secret)');

-- The user a dead letter names and its event time, when the message parsed far enough to say
-- (NULL otherwise).
ALTER TABLE dead_letter_events ADD COLUMN user_id text, ADD COLUMN event_time_ms bigint;
CREATE INDEX dead_letter_events_user_idx ON dead_letter_events (user_id);

-- Ids (SHA-256 of the bytes) of every dead letter ever written. Carries no identity. It makes
-- dead letters write-once for good: a replay from a checkpoint older than an erasure does not
-- bring an erased dead letter back.
CREATE TABLE dead_letter_seen (
    dead_letter_id text PRIMARY KEY,
    first_seen     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO dead_letter_seen (dead_letter_id) SELECT dead_letter_id FROM dead_letter_events;

CREATE FUNCTION dead_letter_events_first_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dead_letter_seen (dead_letter_id) VALUES (NEW.dead_letter_id)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;  -- written before (and possibly erased since): keep it as it is
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER dead_letter_events_first_write BEFORE INSERT ON dead_letter_events
    FOR EACH ROW EXECUTE FUNCTION dead_letter_events_first_write();

CREATE OR REPLACE FUNCTION record_profile_history(p user_profiles, change text, prev_segment text,
                                                  prev_score double precision) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO user_profile_history (user_id, user_pseudonym, as_of, change, profile_epoch_ms,
        profile_version, segment, previous_segment, score, previous_score, model_version,
        expired)
    VALUES (p.user_id, p.user_pseudonym, to_timestamp(p.as_of_ms / 1000.0), change,
        p.profile_epoch_ms, p.profile_version, p.segment, prev_segment, p.score, prev_score,
        p.model_version, p.expired)
$$;

-- `profilestream db rotate-pseudonyms` rewrites pseudonyms without a newer version; it sets
-- profilestream.maintenance = 'on' in its transaction to pass the version guard.
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

-- The bytes of a user_id as protobuf field 2 (tag, length, UTF-8): how the identity appears
-- inside a raw message, including one too broken to parse.
CREATE FUNCTION user_id_field_bytes(u text) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    b bytea := convert_to(u, 'UTF8');
    n integer := length(b);
BEGIN
    IF n < 128 THEN
        RETURN '\x12'::bytea || set_byte('\x00'::bytea, 0, n) || b;
    END IF;
    RETURN '\x12'::bytea || set_byte('\x00'::bytea, 0, (n & 127) | 128)
        || set_byte('\x00'::bytea, 0, n >> 7) || b;
END
$$;

-- Everything PostgreSQL holds about one user: the profile, its history, and the dead letters
-- that name them (by the parsed user_id, or the encoded field inside the raw bytes). With
-- `up_to_ms` (the erasure's event time), only what came before it: a profile that started later
-- (the user came back after the request) and its history stay, as do dead letters with a later
-- event time; dead letters without one are deleted.
CREATE FUNCTION erase_user_data(u text, up_to_ms bigint DEFAULT NULL, OUT profiles bigint,
                                OUT history bigint, OUT dead_letters bigint)
LANGUAGE plpgsql AS $$
DECLARE
    needle bytea := user_id_field_bytes(u);
    bound bigint := coalesce(up_to_ms, 9223372036854775807);
BEGIN
    DELETE FROM user_profile_history WHERE user_id = u AND profile_epoch_ms <= bound;
    GET DIAGNOSTICS history = ROW_COUNT;
    DELETE FROM dead_letter_events
     WHERE (user_id = u OR position(needle IN raw) > 0)
       AND (event_time_ms IS NULL OR event_time_ms <= bound);
    GET DIAGNOSTICS dead_letters = ROW_COUNT;
    PERFORM set_config('profilestream.erasing', 'on', true);  -- done above, and bounded
    DELETE FROM user_profiles WHERE user_id = u AND profile_epoch_ms <= bound;
    GET DIAGNOSTICS profiles = ROW_COUNT;
    PERFORM set_config('profilestream.erasing', 'off', true);
END
$$;

-- The job erases by deleting the profile row (an ERASE event); the rest goes with it.
CREATE FUNCTION user_profiles_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('profilestream.erasing', true) = 'on' THEN
        RETURN NULL;  -- erase_user_data deletes the rest itself
    END IF;
    DELETE FROM user_profile_history WHERE user_id = OLD.user_id;
    DELETE FROM dead_letter_events
     WHERE user_id = OLD.user_id OR position(user_id_field_bytes(OLD.user_id) IN raw) > 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER user_profiles_after_delete AFTER DELETE ON user_profiles
    FOR EACH ROW EXECUTE FUNCTION user_profiles_after_delete();

-- What BI tools read: every column but the raw user_id.
CREATE VIEW bi_user_profiles AS
SELECT user_pseudonym, segment, score, model_version, expired, profile_epoch_ms,
       profile_version, as_of, event_count, views, carts, removes, favorites, purchases,
       searches, views_24h, carts_24h, purchases_30d, spend_micros, spend, spend_30d_micros,
       spend_30d, other_purchases, abandoned_carts, first_event_at, last_event_at,
       last_purchase_at, activity_score, distinct_categories, top_category, sessions, features,
       updated_at
  FROM user_profiles;

CREATE VIEW bi_user_profile_history AS
SELECT history_id, user_pseudonym, recorded_at, as_of, change, profile_epoch_ms,
       profile_version, segment, previous_segment, score, previous_score, model_version, expired
  FROM user_profile_history;

-- bi_reader sees pseudonyms only: the base tables (which hold user_id) are no longer granted.
REVOKE SELECT ON user_profiles, user_profile_history FROM bi_reader;
GRANT SELECT ON bi_user_profiles, bi_user_profile_history TO bi_reader;
