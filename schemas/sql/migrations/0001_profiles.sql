-- 0001: user profiles and dead letters, the tables the stream job writes.
-- Applied by `profilestream db migrate`; the job itself never creates or alters tables.

CREATE TABLE user_profiles (
    user_id             text PRIMARY KEY,
    -- Number of events folded into this profile. Strictly increasing per user; the trigger below
    -- drops any write that does not increase it, so a replay never moves a row backwards.
    profile_version     bigint NOT NULL,
    event_count         bigint NOT NULL,
    views               bigint NOT NULL,
    carts               bigint NOT NULL,
    removes             bigint NOT NULL,
    favorites           bigint NOT NULL,
    purchases           bigint NOT NULL,
    searches            bigint NOT NULL,
    -- Spend on purchases priced in the reporting currency, in micros (1e-6 units); exact.
    spend_micros        bigint NOT NULL,
    spend               numeric(20, 6) GENERATED ALWAYS AS (spend_micros / 1000000.0) STORED,
    -- Purchases without a price or priced in another currency (not in spend).
    other_purchases     bigint NOT NULL,
    first_event_ms      bigint NOT NULL,
    last_event_ms       bigint NOT NULL,
    first_event_at      timestamptz GENERATED ALWAYS AS (to_timestamp(first_event_ms / 1000.0)) STORED,
    last_event_at       timestamptz GENERATED ALWAYS AS (to_timestamp(last_event_ms / 1000.0)) STORED,
    -- Exponentially decayed event count (half-life 24 h of event time) as of last_event_at.
    activity_score      double precision NOT NULL,
    distinct_categories integer NOT NULL,
    -- Purchase propensity from the model named in model_version, scored after the latest event.
    score               double precision NOT NULL,
    model_version       text NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX user_profiles_score_idx ON user_profiles (score DESC);
CREATE INDEX user_profiles_last_event_idx ON user_profiles (last_event_at DESC);
CREATE INDEX user_profiles_updated_idx ON user_profiles (updated_at DESC);

CREATE FUNCTION user_profiles_monotonic() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.profile_version <= OLD.profile_version THEN
        RETURN NULL;  -- an older (or the same) version: keep the row as it is
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER user_profiles_monotonic BEFORE UPDATE ON user_profiles
    FOR EACH ROW EXECUTE FUNCTION user_profiles_monotonic();

-- Messages that broke the event contract, kept with the reason. dead_letter_id is the SHA-256 of
-- the raw bytes, so a replay after a restore writes the same key; the trigger keeps the first
-- write, making each dead letter write-once.
CREATE TABLE dead_letter_events (
    dead_letter_id  text PRIMARY KEY,
    reason          text NOT NULL,
    detail          text NOT NULL,
    raw             bytea NOT NULL,
    source_topic    text NOT NULL,
    seen_at_ms      bigint NOT NULL,
    seen_at         timestamptz GENERATED ALWAYS AS (to_timestamp(seen_at_ms / 1000.0)) STORED,
    inserted_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letter_events_reason_idx ON dead_letter_events (reason);

CREATE FUNCTION dead_letter_events_write_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END
$$;

CREATE TRIGGER dead_letter_events_write_once BEFORE UPDATE ON dead_letter_events
    FOR EACH ROW EXECUTE FUNCTION dead_letter_events_write_once();
