/* The profile's features (udfs/features.py, `features_and_vector_py`) computed in C: the same
 * dict, in the same key order, with the same values of the same types, and the same model
 * input tuple.
 *
 * configure(feature_names, ring_short, ring_mid, ring_day, day_ms, hour_ms) once, then
 * features_and_vector(profile, now_ms, top_k, activity_half_life_ms) -> (dict, tuple), or
 * NotImplemented when the profile holds anything this code does not cover (a value of another
 * type, an integer beyond 2**53, a NaN preference, a cell of another width, a power that
 * overflows): the caller then takes the Python path, which computes it or raises exactly as
 * before. tests/unit/test_features_native.py compares both paths value for value and type for
 * type.
 *
 * Exactness: every float is computed with the operations of the Python code in the same order
 * (built with -ffp-contract=off, so no fused multiply-add). Python's int / int is the correctly
 * rounded quotient, which equals the double division when both ints are below 2**53 in
 * magnitude: every int read here is checked to be. `2.0 ** x` is pow(2.0, x) for a finite x
 * (CPython's float_pow), math.log2 is log2, round() rounds half to even.
 *
 * Why C: the compiled Python spent ~25 us per row on this (a dict of 80 boxed values, sorts of
 * tuples for the top preferences, loops over boxed ints), a fifth of the plain-Python step.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_attrcache.h"

enum { OK = 0, UNSUPPORTED = 1, ERROR = -1 };

#define EXACT_LIMIT 9007199254740992LL /* 2**53 */
#define N_TYPES 6
#define DAY_WIDTH 7 /* the daily ring's cells: counts by type, then spend */
#define MAX_SLOTS 4096

/* The features dict, in the order of udfs/features.py's dict display (keep them equal: the
 * tests compare the key order). */
#define KEYS(X)                                                                                  \
    X(CNT_VIEW_1H, "cnt_view_1h") X(CNT_VIEW_24H, "cnt_view_24h") X(CNT_VIEW_7D, "cnt_view_7d")  \
    X(CNT_VIEW_30D, "cnt_view_30d") X(CNT_VIEW_LIFE, "cnt_view_life")                            \
    X(CNT_CART_1H, "cnt_cart_1h") X(CNT_CART_24H, "cnt_cart_24h") X(CNT_CART_7D, "cnt_cart_7d")  \
    X(CNT_CART_30D, "cnt_cart_30d") X(CNT_CART_LIFE, "cnt_cart_life")                            \
    X(CNT_REMOVE_1H, "cnt_remove_1h") X(CNT_REMOVE_24H, "cnt_remove_24h")                        \
    X(CNT_REMOVE_7D, "cnt_remove_7d") X(CNT_REMOVE_30D, "cnt_remove_30d")                        \
    X(CNT_REMOVE_LIFE, "cnt_remove_life") X(CNT_FAV_1H, "cnt_fav_1h")                            \
    X(CNT_FAV_24H, "cnt_fav_24h") X(CNT_FAV_7D, "cnt_fav_7d") X(CNT_FAV_30D, "cnt_fav_30d")      \
    X(CNT_FAV_LIFE, "cnt_fav_life") X(CNT_PURCHASE_1H, "cnt_purchase_1h")                        \
    X(CNT_PURCHASE_24H, "cnt_purchase_24h") X(CNT_PURCHASE_7D, "cnt_purchase_7d")                \
    X(CNT_PURCHASE_30D, "cnt_purchase_30d") X(CNT_PURCHASE_LIFE, "cnt_purchase_life")            \
    X(CNT_SEARCH_1H, "cnt_search_1h") X(CNT_SEARCH_24H, "cnt_search_24h")                        \
    X(CNT_SEARCH_7D, "cnt_search_7d") X(CNT_SEARCH_30D, "cnt_search_30d")                        \
    X(CNT_SEARCH_LIFE, "cnt_search_life") X(DCY_VIEW_1H, "dcy_view_1h")                          \
    X(DCY_VIEW_1D, "dcy_view_1d") X(DCY_VIEW_7D, "dcy_view_7d") X(DCY_CART_1H, "dcy_cart_1h")    \
    X(DCY_CART_1D, "dcy_cart_1d") X(DCY_CART_7D, "dcy_cart_7d")                                  \
    X(DCY_PURCHASE_1H, "dcy_purchase_1h") X(DCY_PURCHASE_1D, "dcy_purchase_1d")                  \
    X(DCY_PURCHASE_7D, "dcy_purchase_7d") X(ACT_SCORE, "act_score")                              \
    X(RFM_HOURS_SINCE_LAST_EVENT, "rfm_hours_since_last_event")                                  \
    X(RFM_HOURS_SINCE_LAST_PURCHASE, "rfm_hours_since_last_purchase")                            \
    X(RFM_SPEND_30D, "rfm_spend_30d") X(RFM_SPEND_30D_MICROS, "rfm_spend_30d_micros")            \
    X(RFM_SPEND_LIFE, "rfm_spend_life") X(RFM_AOV, "rfm_aov")                                    \
    X(FUN_VIEW_TO_CART, "fun_view_to_cart") X(FUN_CART_TO_PURCHASE, "fun_cart_to_purchase")      \
    X(FUN_ABANDONED_CARTS, "fun_abandoned_carts") X(FUN_CONVERTED_CARTS, "fun_converted_carts")  \
    X(FUN_CART_ABANDONMENT_RATE, "fun_cart_abandonment_rate")                                    \
    X(PREF_TOP_CATEGORY_SHARE, "pref_top_category_share")                                        \
    X(PREF_CATEGORY_ENTROPY, "pref_category_entropy")                                            \
    X(PREF_DISTINCT_CATEGORIES, "pref_distinct_categories")                                      \
    X(PREF_TOP_CATEGORIES, "pref_top_categories") X(PREF_TOP_BRANDS, "pref_top_brands")          \
    X(SES_COUNT, "ses_count") X(SES_MEAN_EVENTS, "ses_mean_events")                              \
    X(SES_MEAN_MINUTES, "ses_mean_minutes") X(SES_CURRENT_DEPTH, "ses_current_depth")            \
    X(PRC_MEAN_VIEWED, "prc_mean_viewed") X(PRC_MEAN_BOUGHT, "prc_mean_bought")                  \
    X(PRC_BOUGHT_TO_VIEWED, "prc_bought_to_viewed") X(HAB_PEAK_HOUR, "hab_peak_hour")            \
    X(HAB_HOURS, "hab_hours") X(TEN_DAYS, "ten_days") X(TEN_ACTIVE_DAYS, "ten_active_days")      \
    X(RFM_PURCHASES_PER_ACTIVE_DAY, "rfm_purchases_per_active_day")                              \
    X(RFM_EVENTS_PER_ACTIVE_DAY, "rfm_events_per_active_day")                                    \
    X(FUN_CARTS_PER_ACTIVE_DAY, "fun_carts_per_active_day")                                      \
    X(REC_HOURS_SINCE_LAST_CART, "rec_hours_since_last_cart")                                    \
    X(REC_HOURS_SINCE_LAST_FAV, "rec_hours_since_last_fav")                                      \
    X(REC_REPEAT_VIEW_SHARE_24H, "rec_repeat_view_share_24h")                                    \
    X(FUN_OPEN_CARTS, "fun_open_carts")                                                          \
    X(FUN_VIEW_TO_PURCHASE_SMOOTHED, "fun_view_to_purchase_smoothed")                            \
    X(RFM_BUY_DAY_RATE, "rfm_buy_day_rate") X(ACT_24H_VS_MEAN, "act_24h_vs_mean")                \
    X(TEN_FIRST_SEEN_MS, "ten_first_seen_ms") X(REC_VIEWED_ITEMS, "rec_viewed_items")            \
    X(REC_CARTED_ITEMS, "rec_carted_items")

#define AS_ENUM(id, name) id,
#define AS_NAME(id, name) name,
enum { KEYS(AS_ENUM) N_KEYS };
static const char *const KEY_NAMES[N_KEYS] = {KEYS(AS_NAME)};
static PyObject *keys[N_KEYS];

/* The Profile's attributes read here. */
#define ATTRS(X)                                                                                 \
    X(A_COUNTS, "counts") X(A_RING_SHORT, "ring_short") X(A_RING_MID, "ring_mid")                \
    X(A_RING_DAY, "ring_day") X(A_REF_MS, "ref_ms") X(A_DECAY, "decay")                          \
    X(A_ACTIVITY, "activity") X(A_LAST_MS, "last_ms") X(A_LAST_PURCHASE_MS, "last_purchase_ms")  \
    X(A_SPEND_MICROS, "spend_micros") X(A_PRICED_PURCHASES, "priced_purchases")                  \
    X(A_ABANDONED_CARTS, "abandoned_carts") X(A_CONVERTED_CARTS, "converted_carts")              \
    X(A_CATEGORIES, "categories") X(A_BRANDS, "brands")                                          \
    X(A_DISTINCT_CATEGORIES, "distinct_categories") X(A_SESSIONS, "sessions")                    \
    X(A_SESSIONS_CLOSED, "sessions_closed") X(A_SESSIONS_CLOSED_EVENTS, "sessions_closed_events") \
    X(A_SESSIONS_CLOSED_MS, "sessions_closed_ms") X(A_VIEW_PRICE_SUM, "view_price_sum")          \
    X(A_VIEW_PRICE_N, "view_price_n") X(A_BUY_PRICE_SUM, "buy_price_sum")                        \
    X(A_BUY_PRICE_N, "buy_price_n") X(A_HOUR_HIST, "hour_hist")                                  \
    X(A_RETIRED_ACTIVE_DAYS, "retired_active_days") X(A_FIRST_MS, "first_ms")                    \
    X(A_RECENT_CARTED, "recent_carted") X(A_RECENT_VIEWED, "recent_viewed")                      \
    X(A_PENDING_CARTS, "pending_carts")

enum { ATTRS(AS_ENUM) N_ATTRS };
static const char *const ATTR_NAMES[N_ATTRS] = {ATTRS(AS_NAME)};
static PyObject *attrs[N_ATTRS];
static AttrCache profile_attrs = {.names = attrs, .n = N_ATTRS};
/* A Preferences' attributes. */
enum { P_TOTAL, P_SLOTS, P_NAMES, N_PREF_ATTRS };
static const char *const PREF_ATTR_NAMES[N_PREF_ATTRS] = {"total", "slots", "names"};
static PyObject *pref_attr_names[N_PREF_ATTRS];
static AttrCache pref_attrs = {.names = pref_attr_names, .n = N_PREF_ATTRS};
static PyObject *s_round, *empty_str, *six;

/* configure()'s settings. */
static int configured;
static Py_ssize_t n_inputs;
static Py_ssize_t input_at[N_KEYS]; /* the model input's i-th name is keys[input_at[i]] */
static int64_t short_ms, short_n, mid_ms, mid_n, day_ms_ring, day_n, day_ms, hour_ms;

/* ---- reading Python values ---------------------------------------------------------------- */

/* An exact int within 2**53 (so int / int and int -> float match Python's). */
static int int_of(PyObject *o, int64_t *out) {
    if (!PyLong_CheckExact(o)) return UNSUPPORTED;
#if PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30
    /* CPython 3.11's layout: the sign and digit count in ob_size, 30-bit digits. Most ints here
     * (counts, times) have one or two digits; read those without the general conversion. */
    Py_ssize_t size = Py_SIZE(o);
    const digit *d = ((PyLongObject *)o)->ob_digit;
    if (size >= -2 && size <= 2) {
        int64_t x = size == 0 ? 0 : (int64_t)d[0];
        if (size == 2 || size == -2) x |= (int64_t)d[1] << PyLong_SHIFT;
        *out = size < 0 ? -x : x; /* below 2**60 */
        if (*out > EXACT_LIMIT || *out < -EXACT_LIMIT) return UNSUPPORTED;
        return OK;
    }
#endif
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (x == -1 && PyErr_Occurred()) return ERROR;
    if (overflow || x > EXACT_LIMIT || x < -EXACT_LIMIT) return UNSUPPORTED;
    *out = (int64_t)x;
    return OK;
}

/* A float, or an exact int within 2**53, as the double Python's arithmetic would use. */
static int double_of(PyObject *o, double *out) {
    if (PyFloat_CheckExact(o)) {
        *out = PyFloat_AS_DOUBLE(o);
        return OK;
    }
    int64_t i;
    int r = int_of(o, &i);
    if (r == OK) *out = (double)i;
    return r;
}

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

/* Python's `2.0 ** x` for the exponents here: UNSUPPORTED where Python would raise. */
static int pow2(double x, double *out) {
    if (x == 0.0) {
        *out = 1.0;
        return OK;
    }
    if (!isfinite(x)) return UNSUPPORTED;
    double r = pow(2.0, x);
    if (isinf(r)) return UNSUPPORTED; /* OverflowError in Python */
    *out = r;
    return OK;
}

/* Python's round(y) for a finite float: half to even. */
static double round_half_even(double x) {
    double rounded = round(x);
    if (fabs(x - rounded) == 0.5) rounded = 2.0 * round(x / 2.0);
    return rounded;
}

/* udfs.features.round6 (`round(x, 6)` exactly), as a new float. */
static PyObject *round6(double x) {
    double y = x * 1e6;
    if (isfinite(y) && fabs(y) < 4503599627370496.0 /* 2**52 */) {
        double n = round_half_even(y);
        /* Python's n is an int: it has no negative zero (n + 0.0 drops it) */
        if (0.5 - fabs(y - n) > fabs(y) * 1e-15) return PyFloat_FromDouble((n + 0.0) / 1e6);
    }
    PyObject *f = PyFloat_FromDouble(x);
    if (!f) return NULL;
    PyObject *r = PyObject_CallMethodObjArgs(f, s_round, six, NULL);
    Py_DECREF(f);
    return r;
}

/* ---- the summaries -------------------------------------------------------------------------- */

/* sketches.window_counts over the whole ring: per-type sums of the buckets in
 * (head - keep, head]. Cells must have N_TYPES ints. */
static int window_counts(PyObject *ring, int64_t now, int64_t width, int64_t keep,
                         int64_t out[N_TYPES]) {
    if (!PyDict_CheckExact(ring)) return UNSUPPORTED;
    int64_t head = floor_div(now, width);
    Py_ssize_t pos = 0;
    PyObject *k, *cell;
    int r;
    for (int i = 0; i < N_TYPES; i++) out[i] = 0;
    while (PyDict_Next(ring, &pos, &k, &cell)) {
        int64_t b;
        if ((r = int_of(k, &b)) != OK) return r;
        if (!PyList_CheckExact(cell) || PyList_GET_SIZE(cell) != N_TYPES) return UNSUPPORTED;
        if (head - keep < b && b <= head) {
            for (int i = 0; i < N_TYPES; i++) {
                int64_t v;
                if ((r = int_of(PyList_GET_ITEM(cell, i), &v)) != OK) return r;
                out[i] += v;
            }
        }
    }
    for (int i = 0; i < N_TYPES; i++)
        if (out[i] > EXACT_LIMIT || out[i] < -EXACT_LIMIT) return UNSUPPORTED;
    return OK;
}

/* features._week_and_month: counts and spend of the last 7 and 30 days, active and buying
 * days of the last 30. */
static int week_and_month(PyObject *ring, int64_t now, int64_t week[DAY_WIDTH],
                          int64_t month[DAY_WIDTH], int64_t *active, int64_t *buying) {
    if (!PyDict_CheckExact(ring)) return UNSUPPORTED;
    int64_t head = floor_div(now, day_ms_ring);
    Py_ssize_t pos = 0;
    PyObject *k, *cell;
    int r;
    for (int i = 0; i < DAY_WIDTH; i++) week[i] = month[i] = 0;
    *active = *buying = 0;
    while (PyDict_Next(ring, &pos, &k, &cell)) {
        int64_t b;
        if ((r = int_of(k, &b)) != OK) return r;
        if (!PyList_CheckExact(cell) || PyList_GET_SIZE(cell) != DAY_WIDTH) return UNSUPPORTED;
        int64_t age = head - b;
        if (0 <= age && age < day_n) {
            int64_t v[DAY_WIDTH];
            for (int i = 0; i < DAY_WIDTH; i++)
                if ((r = int_of(PyList_GET_ITEM(cell, i), &v[i])) != OK) return r;
            (*active)++;
            if (v[4] > 0) (*buying)++;
            for (int i = 0; i < DAY_WIDTH; i++) {
                month[i] += v[i];
                if (age < 7) week[i] += v[i];
            }
        }
    }
    for (int i = 0; i < DAY_WIDTH; i++)
        if (month[i] > EXACT_LIMIT || month[i] < -EXACT_LIMIT || week[i] > EXACT_LIMIT ||
            week[i] < -EXACT_LIMIT)
            return UNSUPPORTED;
    return OK;
}

/* features._hours_since_newest for type index `kind`: the newest bucket holding one, in the
 * short, then the mid, then the daily ring; NaN when none. */
static int hours_since_newest(PyObject *rings[3], const int64_t widths[3], const int64_t ns[3],
                              int kind, int64_t now, double *out) {
    int r;
    for (int j = 0; j < 3; j++) {
        PyObject *ring = rings[j];
        if (!PyDict_CheckExact(ring)) return UNSUPPORTED;
        int64_t head = floor_div(now, widths[j]);
        int64_t newest = -1;
        Py_ssize_t pos = 0;
        PyObject *k, *cell;
        while (PyDict_Next(ring, &pos, &k, &cell)) {
            int64_t b, v;
            if ((r = int_of(k, &b)) != OK) return r;
            if (!PyList_CheckExact(cell) || PyList_GET_SIZE(cell) <= kind) return UNSUPPORTED;
            if (0 <= head - b && head - b < ns[j]) {
                if ((r = int_of(PyList_GET_ITEM(cell, kind), &v)) != OK) return r;
                if (v > 0 && b > newest) newest = b;
            }
        }
        if (newest >= 0) {
            int64_t start = newest * widths[j];
            if (start > EXACT_LIMIT || now - start > EXACT_LIMIT || now - start < -EXACT_LIMIT)
                return UNSUPPORTED;
            double h = (double)(now - start) / (double)hour_ms;
            *out = h > 0.0 ? h : 0.0; /* max(0.0, h) */
            return OK;
        }
    }
    *out = Py_NAN;
    return OK;
}

typedef struct {
    double value;
    int64_t key;
    PyObject *key_obj; /* borrowed from the slots dict */
} Slot;

/* Preferences.top's order: affinity descending, then the smaller hash. */
static int slot_cmp(const void *a, const void *b) {
    const Slot *x = a, *y = b;
    if (x->value > y->value) return -1;
    if (x->value < y->value) return 1;
    return (x->key > y->key) - (x->key < y->key);
}

typedef struct {
    PyObject *slots, *names; /* new references */
    double total;
    Slot local[64];
    Slot *items;
    Py_ssize_t n;
} Prefs;

static void prefs_free(Prefs *p) {
    Py_XDECREF(p->slots);
    Py_XDECREF(p->names);
    if (p->items && p->items != p->local) PyMem_Free(p->items);
}

/* Reads a Preferences and sorts its slots in `top` order (dict order is kept apart for the
 * entropy, which sums in it). */
static int prefs_read(PyObject *obj, Prefs *p) {
    p->slots = p->names = NULL;
    p->items = NULL;
    p->n = 0;
    PyObject *total = attrcache_get(&pref_attrs, obj, P_TOTAL);
    if (!total) return ERROR;
    int r = double_of(total, &p->total);
    Py_DECREF(total);
    if (r != OK) return r;
    if (!(p->slots = attrcache_get(&pref_attrs, obj, P_SLOTS))) return ERROR;
    if (!(p->names = attrcache_get(&pref_attrs, obj, P_NAMES))) return ERROR;
    if (!PyDict_CheckExact(p->slots) || !PyDict_CheckExact(p->names)) return UNSUPPORTED;
    Py_ssize_t n = PyDict_GET_SIZE(p->slots);
    if (n > MAX_SLOTS) return UNSUPPORTED;
    p->items = n <= 64 ? p->local : PyMem_Malloc(n * sizeof(Slot));
    if (!p->items) {
        PyErr_NoMemory();
        return ERROR;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(p->slots, &pos, &k, &v)) {
        Slot *s = &p->items[p->n++];
        if ((r = int_of(k, &s->key)) != OK) return r;
        if ((r = double_of(v, &s->value)) != OK) return r;
        if (isnan(s->value)) return UNSUPPORTED; /* Python's sort of NaN keys: not ours */
        s->key_obj = k;
    }
    qsort(p->items, p->n, sizeof(Slot), slot_cmp);
    return OK;
}

/* features._shares(prefs, prefs.top(k)): [[name, share], ...]. */
static PyObject *shares(Prefs *p, Py_ssize_t k) {
    Py_ssize_t n = p->n < k ? p->n : k;
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyDict_GetItemWithError(p->names, p->items[i].key_obj);
        if (!name) {
            if (PyErr_Occurred()) goto fail;
            name = empty_str;
        }
        PyObject *share;
        if (p->total != 0.0) {
            share = round6(p->items[i].value / p->total);
        } else {
            share = PyLong_FromLong(0);
        }
        if (!share) goto fail;
        PyObject *pair = PyList_New(2);
        if (!pair) {
            Py_DECREF(share);
            goto fail;
        }
        PyList_SET_ITEM(pair, 0, Py_NewRef(name));
        PyList_SET_ITEM(pair, 1, share);
        PyList_SET_ITEM(out, i, pair);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* features._entropy, summing in the slots' dict order (Python sums `covered` and `acc` in two
 * loops over the same order; each sum is the same in one). */
static int entropy(Prefs *p, double *out) {
    double total = p->total;
    if (total <= 0) {
        *out = Py_NAN;
        return OK;
    }
    double covered = 0.0, acc = 0.0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(p->slots, &pos, &k, &v)) {
        double x;
        int r = double_of(v, &x);
        if (r != OK) return r;
        double share = x / total;
        covered += share;
        if (share > 0) acc += share * log2(share);
    }
    double rest = 1.0 - covered;
    rest = rest > 0.0 ? rest : 0.0; /* max(0.0, rest) */
    if (rest > 0) acc += rest * log2(rest);
    *out = -acc;
    return OK;
}

/* [item for _, item in reversed(pairs)] */
static PyObject *items_newest_first(PyObject *pairs) {
    Py_ssize_t n = PyList_GET_SIZE(pairs);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, n - 1 - i);
        PyList_SET_ITEM(out, i, Py_NewRef(PyTuple_GET_ITEM(pair, 1)));
    }
    return out;
}

/* A list of (int time, item) tuples. */
static int check_pairs(PyObject *pairs) {
    if (!PyList_CheckExact(pairs)) return UNSUPPORTED;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        int64_t t;
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) return UNSUPPORTED;
        int r = int_of(PyTuple_GET_ITEM(pair, 0), &t);
        if (r != OK) return r;
    }
    return OK;
}

static int64_t pair_time(PyObject *pairs, Py_ssize_t i) {
    int64_t t = 0;
    int_of(PyTuple_GET_ITEM(PyList_GET_ITEM(pairs, i), 0), &t); /* checked by check_pairs */
    return t;
}

/* ---- the features --------------------------------------------------------------------------- */

static PyObject *f(double x) { return PyFloat_FromDouble(x); }
static PyObject *i(int64_t x) { return PyLong_FromLongLong(x); }

/* Python's `a / b if b else NaN` (features._ratio). */
static double ratio(double a, double b) { return b != 0.0 ? a / b : Py_NAN; }

static PyObject *features_and_vector(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "features_and_vector(profile, now_ms, top_k, activity_half_life_ms)");
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "udfs._features.configure() was not called");
        return NULL;
    }
    PyObject *profile = args[0];
    int64_t now, top_k, act_half_life;
    int r;
    if ((r = int_of(args[1], &now)) != OK || (r = int_of(args[2], &top_k)) != OK ||
        (r = int_of(args[3], &act_half_life)) != OK) {
        if (r == ERROR) return NULL;
        return Py_NewRef(Py_NotImplemented);
    }
    if (top_k < 0 || act_half_life == 0) return Py_NewRef(Py_NotImplemented);

    PyObject *a[N_ATTRS] = {NULL};
    PyObject *v[N_KEYS] = {NULL};
    Prefs cats = {0}, brands = {0};
    PyObject *result = NULL;
    for (int k = 0; k < N_ATTRS; k++) {
        if (!(a[k] = attrcache_get(&profile_attrs, profile, k))) goto fail;
    }
#define TRY(expr)                                                                                \
    do {                                                                                         \
        if ((r = (expr)) != OK) goto end;                                                        \
    } while (0)
#define SET(key, expr)                                                                           \
    do {                                                                                         \
        if (!(v[key] = (expr))) goto fail;                                                       \
    } while (0)

    /* windows */
    int64_t shrt[N_TYPES], mid[N_TYPES], week[DAY_WIDTH], month[DAY_WIDTH], active, buying;
    TRY(window_counts(a[A_RING_SHORT], now, short_ms, short_n, shrt));
    TRY(window_counts(a[A_RING_MID], now, mid_ms, mid_n, mid));
    TRY(week_and_month(a[A_RING_DAY], now, week, month, &active, &buying));
    PyObject *counts_obj = a[A_COUNTS];
    if (!PyList_CheckExact(counts_obj) || PyList_GET_SIZE(counts_obj) != N_TYPES) {
        r = UNSUPPORTED;
        goto end;
    }
    int64_t counts[N_TYPES], event_count = 0;
    for (int k = 0; k < N_TYPES; k++) {
        TRY(int_of(PyList_GET_ITEM(counts_obj, k), &counts[k]));
        event_count += counts[k];
    }
    if (event_count > EXACT_LIMIT || event_count < -EXACT_LIMIT) {
        r = UNSUPPORTED;
        goto end;
    }
    int64_t views = counts[0], carts = counts[1], purchases = counts[4];

    /* decayed values */
    int64_t ref, last, last_purchase, first;
    TRY(int_of(a[A_REF_MS], &ref));
    TRY(int_of(a[A_LAST_MS], &last));
    TRY(int_of(a[A_LAST_PURCHASE_MS], &last_purchase));
    TRY(int_of(a[A_FIRST_MS], &first));
    int64_t since_ref = now - ref;
    if (since_ref > EXACT_LIMIT || since_ref < -EXACT_LIMIT) {
        r = UNSUPPORTED;
        goto end;
    }
    double factor_1h, factor_1d, factor_7d, act_factor, activity;
    TRY(pow2((double)(-since_ref) / (double)hour_ms, &factor_1h));
    TRY(pow2((double)(-since_ref) / (double)day_ms, &factor_1d));
    TRY(pow2((double)(-since_ref) / (double)(7 * day_ms), &factor_7d));
    TRY(pow2((double)(-since_ref) / (double)act_half_life, &act_factor));
    TRY(double_of(a[A_ACTIVITY], &activity));
    PyObject *decay_obj = a[A_DECAY];
    if (!PyList_CheckExact(decay_obj) || PyList_GET_SIZE(decay_obj) != 9) {
        r = UNSUPPORTED;
        goto end;
    }
    double decay[9];
    for (int k = 0; k < 9; k++) TRY(double_of(PyList_GET_ITEM(decay_obj, k), &decay[k]));

    /* recency, money, funnel */
    int64_t spend, priced, abandoned, converted;
    TRY(int_of(a[A_SPEND_MICROS], &spend));
    TRY(int_of(a[A_PRICED_PURCHASES], &priced));
    TRY(int_of(a[A_ABANDONED_CARTS], &abandoned));
    TRY(int_of(a[A_CONVERTED_CARTS], &converted));
    double hours_since_last_event = (double)(now - last) / (double)hour_ms;
    double hours_since_last_purchase =
        last_purchase ? (double)(now - last_purchase) / (double)hour_ms : Py_NAN;
    int64_t spend_30d_micros = month[N_TYPES];
    double aov = ratio((double)spend / 1e6, (double)priced);

    /* preferences */
    TRY(prefs_read(a[A_CATEGORIES], &cats));
    TRY(prefs_read(a[A_BRANDS], &brands));
    double top_share = cats.n > 0 && top_k > 0 ? ratio(cats.items[0].value, cats.total) : Py_NAN;
    double cat_entropy;
    TRY(entropy(&cats, &cat_entropy));

    /* sessions */
    PyObject *sessions = a[A_SESSIONS];
    if (!PyList_CheckExact(sessions)) {
        r = UNSUPPORTED;
        goto end;
    }
    int64_t open_events = 0, open_ms = 0, depth = 0, s_closed, s_events, s_ms;
    Py_ssize_t n_open = PyList_GET_SIZE(sessions);
    for (Py_ssize_t k = 0; k < n_open; k++) {
        PyObject *s = PyList_GET_ITEM(sessions, k);
        int64_t start, stop, events;
        if (!PyList_CheckExact(s) || PyList_GET_SIZE(s) != 3) {
            r = UNSUPPORTED;
            goto end;
        }
        TRY(int_of(PyList_GET_ITEM(s, 0), &start));
        TRY(int_of(PyList_GET_ITEM(s, 1), &stop));
        TRY(int_of(PyList_GET_ITEM(s, 2), &events));
        open_events += events;
        open_ms += stop - start;
        depth = events;
    }
    TRY(int_of(a[A_SESSIONS_CLOSED], &s_closed));
    TRY(int_of(a[A_SESSIONS_CLOSED_EVENTS], &s_events));
    TRY(int_of(a[A_SESSIONS_CLOSED_MS], &s_ms));
    int64_t n_sessions = s_closed + n_open, ses_events = s_events + open_events,
            ses_ms = s_ms + open_ms;
    if (n_sessions > EXACT_LIMIT || ses_events > EXACT_LIMIT || ses_events < -EXACT_LIMIT ||
        ses_ms > EXACT_LIMIT || ses_ms < -EXACT_LIMIT) {
        r = UNSUPPORTED;
        goto end;
    }

    /* prices */
    int64_t vps, vpn, bps, bpn;
    TRY(int_of(a[A_VIEW_PRICE_SUM], &vps));
    TRY(int_of(a[A_VIEW_PRICE_N], &vpn));
    TRY(int_of(a[A_BUY_PRICE_SUM], &bps));
    TRY(int_of(a[A_BUY_PRICE_N], &bpn));
    double viewed = ratio((double)vps / 1e6, (double)vpn);
    double bought = ratio((double)bps / 1e6, (double)bpn);
    double bought_to_viewed = !isnan(viewed) ? ratio(bought, viewed) : Py_NAN;

    /* habits */
    PyObject *hours_obj = a[A_HOUR_HIST];
    if (!PyList_CheckExact(hours_obj) || PyList_GET_SIZE(hours_obj) != 24) {
        r = UNSUPPORTED;
        goto end;
    }
    double hours[24], total_hours = 0.0;
    int peak = 0;
    for (int k = 0; k < 24; k++) {
        TRY(double_of(PyList_GET_ITEM(hours_obj, k), &hours[k]));
        total_hours += hours[k];
        if (hours[k] > hours[peak]) peak = k;
    }

    /* tenure, rates */
    int64_t retired;
    TRY(int_of(a[A_RETIRED_ACTIVE_DAYS], &retired));
    int64_t active_days = retired + PyDict_GET_SIZE(a[A_RING_DAY]);
    if (active_days > EXACT_LIMIT || now - first > EXACT_LIMIT || now - first < -EXACT_LIMIT) {
        r = UNSUPPORTED;
        goto end;
    }
    double ten_days = (double)(now - first) / (double)day_ms;
    double events_per_day = ratio((double)event_count, (double)active_days);

    /* recent items */
    PyObject *carted = a[A_RECENT_CARTED], *viewed_items = a[A_RECENT_VIEWED];
    TRY(check_pairs(carted));
    TRY(check_pairs(viewed_items));
    if (!PyList_CheckExact(a[A_PENDING_CARTS])) {
        r = UNSUPPORTED;
        goto end;
    }
    int64_t last_cart = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(carted); k++) {
        int64_t t = pair_time(carted, k);
        if (t > last_cart) last_cart = t;
    }
    double hours_since_last_cart =
        last_cart ? (double)(now - last_cart) / (double)hour_ms : Py_NAN;
    PyObject *rings[3] = {a[A_RING_SHORT], a[A_RING_MID], a[A_RING_DAY]};
    const int64_t widths[3] = {short_ms, mid_ms, day_ms_ring};
    const int64_t ns[3] = {short_n, mid_n, day_n};
    double hours_since_last_fav;
    TRY(hours_since_newest(rings, widths, ns, 3, now, &hours_since_last_fav));
    int64_t views_24h = mid[0], distinct_24h = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(viewed_items); k++) {
        if (now - pair_time(viewed_items, k) < day_ms) distinct_24h++;
    }
    double repeat_share =
        views_24h ? 1.0 - (double)(distinct_24h < views_24h ? distinct_24h : views_24h) /
                              (double)views_24h
                  : Py_NAN;
    double prior = 0.02 * 50.0; /* CONVERSION_PRIOR_RATE * CONVERSION_PRIOR_VIEWS */
    double smoothed = ((double)purchases + prior) / ((double)views + 50.0);
    int64_t events_24h = 0;
    for (int k = 0; k < N_TYPES; k++) events_24h += mid[k];

    /* the dict's values, in its order */
    static const int CNT[N_TYPES][5] = {
        {CNT_VIEW_1H, CNT_VIEW_24H, CNT_VIEW_7D, CNT_VIEW_30D, CNT_VIEW_LIFE},
        {CNT_CART_1H, CNT_CART_24H, CNT_CART_7D, CNT_CART_30D, CNT_CART_LIFE},
        {CNT_REMOVE_1H, CNT_REMOVE_24H, CNT_REMOVE_7D, CNT_REMOVE_30D, CNT_REMOVE_LIFE},
        {CNT_FAV_1H, CNT_FAV_24H, CNT_FAV_7D, CNT_FAV_30D, CNT_FAV_LIFE},
        {CNT_PURCHASE_1H, CNT_PURCHASE_24H, CNT_PURCHASE_7D, CNT_PURCHASE_30D,
         CNT_PURCHASE_LIFE},
        {CNT_SEARCH_1H, CNT_SEARCH_24H, CNT_SEARCH_7D, CNT_SEARCH_30D, CNT_SEARCH_LIFE},
    };
    for (int t = 0; t < N_TYPES; t++) {
        SET(CNT[t][0], i(shrt[t]));
        SET(CNT[t][1], i(mid[t]));
        SET(CNT[t][2], i(week[t]));
        SET(CNT[t][3], i(month[t]));
        SET(CNT[t][4], i(counts[t]));
    }
    const double factors[3] = {factor_1h, factor_1d, factor_7d};
    for (int k = 0; k < 9; k++) SET(DCY_VIEW_1H + k, f(decay[k] * factors[k % 3]));
    SET(ACT_SCORE, f(activity * act_factor));
    SET(RFM_HOURS_SINCE_LAST_EVENT, f(hours_since_last_event));
    SET(RFM_HOURS_SINCE_LAST_PURCHASE, f(hours_since_last_purchase));
    SET(RFM_SPEND_30D, f((double)spend_30d_micros / 1e6));
    SET(RFM_SPEND_30D_MICROS, i(spend_30d_micros));
    SET(RFM_SPEND_LIFE, f((double)spend / 1e6));
    SET(RFM_AOV, f(aov));
    SET(FUN_VIEW_TO_CART, f(ratio((double)carts, (double)views)));
    SET(FUN_CART_TO_PURCHASE, f(ratio((double)purchases, (double)carts)));
    SET(FUN_ABANDONED_CARTS, i(abandoned));
    SET(FUN_CONVERTED_CARTS, i(converted));
    SET(FUN_CART_ABANDONMENT_RATE, f(ratio((double)abandoned, (double)(abandoned + converted))));
    SET(PREF_TOP_CATEGORY_SHARE, f(top_share));
    SET(PREF_CATEGORY_ENTROPY, f(cat_entropy));
    SET(PREF_DISTINCT_CATEGORIES, Py_NewRef(a[A_DISTINCT_CATEGORIES]));
    SET(PREF_TOP_CATEGORIES, shares(&cats, (Py_ssize_t)top_k));
    SET(PREF_TOP_BRANDS, brands.n ? shares(&brands, (Py_ssize_t)top_k) : PyList_New(0));
    SET(SES_COUNT, i(n_sessions));
    SET(SES_MEAN_EVENTS, f(ratio((double)ses_events, (double)n_sessions)));
    SET(SES_MEAN_MINUTES, f(ratio((double)ses_ms / 60000.0, (double)n_sessions)));
    SET(SES_CURRENT_DEPTH, i(depth));
    SET(PRC_MEAN_VIEWED, f(viewed));
    SET(PRC_MEAN_BOUGHT, f(bought));
    SET(PRC_BOUGHT_TO_VIEWED, f(bought_to_viewed));
    SET(HAB_PEAK_HOUR, total_hours != 0.0 ? i(peak) : f(Py_NAN));
    SET(HAB_HOURS, PyList_New(24));
    for (int k = 0; k < 24; k++) {
        PyObject *share = f(total_hours != 0.0 ? hours[k] / total_hours : 0.0);
        if (!share) goto fail;
        PyList_SET_ITEM(v[HAB_HOURS], k, share);
    }
    SET(TEN_DAYS, f(ten_days));
    SET(TEN_ACTIVE_DAYS, i(active_days));
    SET(RFM_PURCHASES_PER_ACTIVE_DAY, f(ratio((double)purchases, (double)active_days)));
    SET(RFM_EVENTS_PER_ACTIVE_DAY, f(events_per_day));
    SET(FUN_CARTS_PER_ACTIVE_DAY, f(ratio((double)carts, (double)active_days)));
    SET(REC_HOURS_SINCE_LAST_CART, f(hours_since_last_cart));
    SET(REC_HOURS_SINCE_LAST_FAV, f(hours_since_last_fav));
    SET(REC_REPEAT_VIEW_SHARE_24H, f(repeat_share));
    SET(FUN_OPEN_CARTS, i(PyList_GET_SIZE(a[A_PENDING_CARTS])));
    SET(FUN_VIEW_TO_PURCHASE_SMOOTHED, f(smoothed));
    SET(RFM_BUY_DAY_RATE, f(active ? (double)buying / (double)active : Py_NAN));
    SET(ACT_24H_VS_MEAN, f(ratio((double)events_24h, events_per_day)));
    SET(TEN_FIRST_SEEN_MS, i(first));
    SET(REC_VIEWED_ITEMS, items_newest_first(viewed_items));
    SET(REC_CARTED_ITEMS, items_newest_first(carted));

    PyObject *dict = _PyDict_NewPresized(N_KEYS);
    if (!dict) goto fail;
    for (int k = 0; k < N_KEYS; k++) {
        if (PyDict_SetItem(dict, keys[k], v[k]) < 0) {
            Py_DECREF(dict);
            goto fail;
        }
    }
    PyObject *vector = PyTuple_New(n_inputs);
    if (!vector) {
        Py_DECREF(dict);
        goto fail;
    }
    for (Py_ssize_t k = 0; k < n_inputs; k++)
        PyTuple_SET_ITEM(vector, k, Py_NewRef(v[input_at[k]]));
    result = PyTuple_Pack(2, dict, vector);
    Py_DECREF(dict);
    Py_DECREF(vector);
    goto fail; /* the cleanup below; result is set */
#undef TRY
#undef SET
end:
    if (r == UNSUPPORTED) result = Py_NewRef(Py_NotImplemented);
fail:
    prefs_free(&cats);
    prefs_free(&brands);
    for (int k = 0; k < N_KEYS; k++) Py_XDECREF(v[k]);
    for (int k = 0; k < N_ATTRS; k++) Py_XDECREF(a[k]);
    return result;
}

/* configure(feature_names, ring_short, ring_mid, ring_day, day_ms, hour_ms) */
static PyObject *configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "configure(feature_names: tuple[str, ...], ring_short, "
                                         "ring_mid, ring_day, day_ms, hour_ms)");
        return NULL;
    }
    int64_t specs[6];
    for (int k = 0; k < 3; k++) {
        PyObject *spec = args[1 + k];
        if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2) {
            PyErr_SetString(PyExc_TypeError, "a ring spec is (bucket width in ms, buckets kept)");
            return NULL;
        }
        for (int j = 0; j < 2; j++) {
            specs[2 * k + j] = PyLong_AsLongLong(PyTuple_GET_ITEM(spec, j));
            if (specs[2 * k + j] == -1 && PyErr_Occurred()) return NULL;
            if (specs[2 * k + j] <= 0) {
                PyErr_SetString(PyExc_ValueError, "ring widths and sizes must be positive");
                return NULL;
            }
        }
    }
    int64_t day = PyLong_AsLongLong(args[4]), hour = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (day <= 0 || hour <= 0) {
        PyErr_SetString(PyExc_ValueError, "day_ms and hour_ms must be positive");
        return NULL;
    }
    PyObject *names = args[0];
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n > N_KEYS) {
        PyErr_SetString(PyExc_ValueError, "more feature names than features");
        return NULL;
    }
    Py_ssize_t at[N_KEYS];
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *name = PyTuple_GET_ITEM(names, k);
        at[k] = -1;
        for (int j = 0; j < N_KEYS; j++) {
            int eq = PyObject_RichCompareBool(name, keys[j], Py_EQ);
            if (eq < 0) return NULL;
            if (eq) {
                at[k] = j;
                break;
            }
        }
        if (at[k] < 0) {
            PyErr_Format(PyExc_ValueError, "feature %R is not computed by udfs._features", name);
            return NULL;
        }
    }
    memcpy(input_at, at, sizeof(Py_ssize_t) * n);
    n_inputs = n;
    short_ms = specs[0];
    short_n = specs[1];
    mid_ms = specs[2];
    mid_n = specs[3];
    day_ms_ring = specs[4];
    day_n = specs[5];
    day_ms = day;
    hour_ms = hour;
    configured = 1;
    Py_RETURN_NONE;
}

static PyObject *key_order(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *out = PyTuple_New(N_KEYS);
    if (!out) return NULL;
    for (int k = 0; k < N_KEYS; k++) PyTuple_SET_ITEM(out, k, Py_NewRef(keys[k]));
    return out;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(feature_names, ring_short, ring_mid, ring_day, day_ms, hour_ms)\n"
     "The model input's names in order, the rings' (bucket ms, buckets kept), the day and "
     "hour in ms."},
    {"features_and_vector", (PyCFunction)(void (*)(void))features_and_vector, METH_FASTCALL,
     "features_and_vector(profile, now_ms, top_k, activity_half_life_ms) -> (dict, tuple) | "
     "NotImplemented\n"
     "udfs.features.features_and_vector_py in C (NotImplemented: use the Python path)."},
    {"key_order", key_order, METH_NOARGS, "The features dict's keys, in order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "udfs._features",
    "The profile's features in C (see udfs/features.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__features(void) {
    for (int k = 0; k < N_KEYS; k++) {
        if (!(keys[k] = PyUnicode_InternFromString(KEY_NAMES[k]))) return NULL;
    }
    if (attrcache_intern(&profile_attrs, ATTR_NAMES) < 0 ||
        attrcache_intern(&pref_attrs, PREF_ATTR_NAMES) < 0)
        return NULL;
    s_round = PyUnicode_InternFromString("__round__");
    empty_str = PyUnicode_FromString("");
    six = PyLong_FromLong(6);
    if (!s_round || !empty_str || !six) return NULL;
    return PyModule_Create(&module_def);
}
