-- 0005: every score carries its reasons. score_reasons holds the score's three largest SHAP
-- contributions (LightGBM's own, in log-odds), largest magnitude first:
--   [{"feature": "cnt_cart_24h", "contribution": 0.41}, ...]
-- All contributions plus the model's bias add up to the log-odds of the uncalibrated score; the
-- score itself is that probability mapped through the model's calibration (monotone), so a
-- positive contribution always pushes the score up. The job recomputes reasons when the score
-- has moved by 0.02 since they were computed (they cost more than the rest of the row); in
-- between rows carry the last ones. Rows written before this migration get it on their next
-- update (NULL until then).
ALTER TABLE user_profiles ADD COLUMN score_reasons jsonb;

-- BI sees it in the same view, as a new last column (existing queries are unaffected).
CREATE OR REPLACE VIEW bi_user_profiles AS
SELECT user_pseudonym, segment, score, model_version, expired, profile_epoch_ms,
       profile_version, as_of, event_count, views, carts, removes, favorites, purchases,
       searches, views_24h, carts_24h, purchases_30d, spend_micros, spend, spend_30d_micros,
       spend_30d, other_purchases, abandoned_carts, first_event_at, last_event_at,
       last_purchase_at, activity_score, distinct_categories, top_category, sessions, features,
       updated_at, score_reasons
  FROM user_profiles;

-- One row per (shopper, reason): "why is this shopper high propensity?" without JSON functions.
CREATE VIEW bi_score_reasons AS
SELECT p.user_pseudonym, p.score, p.model_version, p.segment, r.ordinality AS rank,
       r.value ->> 'feature' AS feature, (r.value ->> 'contribution')::double precision
       AS contribution
  FROM user_profiles p
 CROSS JOIN LATERAL jsonb_array_elements(coalesce(p.score_reasons, '[]'::jsonb))
       WITH ORDINALITY AS r(value, ordinality);

GRANT SELECT ON bi_score_reasons TO bi_reader;

