-- 0002: the rich profile (issue 3): segments, windowed counts, inactivity and expiry, the full
-- feature set as JSONB. Rows are ordered by (profile_epoch_ms, profile_version): a profile that
-- expired and came back starts a new epoch.

ALTER TABLE user_profiles
    ADD COLUMN profile_epoch_ms bigint NOT NULL DEFAULT 0,
    ADD COLUMN as_of_ms bigint NOT NULL DEFAULT 0,
    ADD COLUMN expired boolean NOT NULL DEFAULT false,
    ADD COLUMN segment text NOT NULL DEFAULT 'new',
    ADD COLUMN views_24h bigint NOT NULL DEFAULT 0,
    ADD COLUMN carts_24h bigint NOT NULL DEFAULT 0,
    ADD COLUMN purchases_30d bigint NOT NULL DEFAULT 0,
    ADD COLUMN spend_30d_micros bigint NOT NULL DEFAULT 0,
    ADD COLUMN abandoned_carts bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_purchase_ms bigint,
    ADD COLUMN top_category text,
    ADD COLUMN sessions bigint NOT NULL DEFAULT 0,
    ADD COLUMN features jsonb NOT NULL DEFAULT '{}';

ALTER TABLE user_profiles
    ADD COLUMN as_of timestamptz GENERATED ALWAYS AS (to_timestamp(as_of_ms / 1000.0)) STORED,
    ADD COLUMN spend_30d numeric(20, 6) GENERATED ALWAYS AS (spend_30d_micros / 1000000.0) STORED,
    ADD COLUMN last_purchase_at timestamptz
        GENERATED ALWAYS AS (to_timestamp(last_purchase_ms / 1000.0)) STORED;

ALTER TABLE user_profiles ADD CONSTRAINT user_profiles_segment_check CHECK (segment IN (
    'new', 'active_browser', 'cart_abandoner', 'loyal_buyer', 'high_value', 'at_risk', 'dormant'));

CREATE INDEX user_profiles_segment_idx ON user_profiles (segment) WHERE NOT expired;
CREATE INDEX user_profiles_expired_idx ON user_profiles (expired);

CREATE OR REPLACE FUNCTION user_profiles_monotonic() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.profile_epoch_ms, NEW.profile_version) <= (OLD.profile_epoch_ms, OLD.profile_version)
    THEN
        RETURN NULL;  -- an older (or the same) update: keep the row as it is
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
