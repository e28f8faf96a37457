/* The profile's state encoding (format 3, udfs/codec.py) written in C: the same bytes as
 * `udfs.codec._encode_profile_py`, which builds the MessagePack body as Python lists and hands
 * it to msgpack's packer (use_bin_type=True, use_single_float=True).
 *
 * encode_v3(profile, ring_short_ms, ring_mid_ms, ring_day_ms) -> bytes, or NotImplemented when
 * the profile holds anything this writer does not cover (a value of another type, an integer
 * out of MessagePack's range, a string that is not valid UTF-8): the caller then takes the
 * Python path, which encodes it or raises exactly as before. tests/unit/test_codec.py checks
 * both paths byte for byte.
 *
 * Why C: building the body as ~100 short-lived Python lists and tuples per event, then walking
 * them again in the packer, was ~15 us of the plain-Python step and more inside the job, where
 * every object touched is a cold cache line (docs/performance.md, "Cold caches").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_attrcache.h"

#define FORMAT_V3 3

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char local[2048];
} Buf;

/* Returned by the writers: OK, UNSUPPORTED (take the Python path) or ERROR (an exception is
 * set: memory). */
enum { OK = 0, UNSUPPORTED = 1, ERROR = -1 };

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return OK;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + extra) cap *= 2;
    char *data;
    if (b->data == b->local) {
        data = PyMem_Malloc(cap);
        if (data) memcpy(data, b->local, b->len);
    } else {
        data = PyMem_Realloc(b->data, cap);
    }
    if (!data) {
        PyErr_NoMemory();
        return ERROR;
    }
    b->data = data;
    b->cap = cap;
    return OK;
}

static inline int put(Buf *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) != OK) return ERROR;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return OK;
}

static inline int put_byte_be(Buf *b, unsigned char tag, uint64_t v, int width) {
    unsigned char out[9];
    out[0] = tag;
    for (int i = 0; i < width; i++) out[1 + i] = (unsigned char)(v >> (8 * (width - 1 - i)));
    return put(b, out, 1 + width);
}

/* msgpack's pack_template.h: the smallest encoding of a signed 64-bit integer. */
static int put_int(Buf *b, int64_t d) {
    if (d < -(1LL << 5)) {
        if (d < -(1LL << 15)) {
            if (d < -(1LL << 31)) return put_byte_be(b, 0xd3, (uint64_t)d, 8);
            return put_byte_be(b, 0xd2, (uint64_t)(uint32_t)(int32_t)d, 4);
        }
        if (d < -(1 << 7)) return put_byte_be(b, 0xd1, (uint64_t)(uint16_t)(int16_t)d, 2);
        return put_byte_be(b, 0xd0, (uint64_t)(uint8_t)(int8_t)d, 1);
    }
    if (d < (1 << 7)) {
        unsigned char c = (unsigned char)(int8_t)d;
        return put(b, &c, 1);
    }
    if (d < (1LL << 16)) {
        if (d < (1 << 8)) return put_byte_be(b, 0xcc, (uint64_t)d, 1);
        return put_byte_be(b, 0xcd, (uint64_t)d, 2);
    }
    if (d < (1LL << 32)) return put_byte_be(b, 0xce, (uint64_t)d, 4);
    return put_byte_be(b, 0xcf, (uint64_t)d, 8);
}

static int put_uint64(Buf *b, uint64_t v) {
    if (v <= (uint64_t)INT64_MAX) return put_int(b, (int64_t)v);
    return put_byte_be(b, 0xcf, v, 8);
}

static int put_array_header(Buf *b, Py_ssize_t n) {
    if (n < 16) {
        unsigned char c = (unsigned char)(0x90 | n);
        return put(b, &c, 1);
    }
    if (n < 65536) return put_byte_be(b, 0xdc, (uint64_t)n, 2);
    if (n <= 0xffffffffLL) return put_byte_be(b, 0xdd, (uint64_t)n, 4);
    return UNSUPPORTED;
}

static int put_bin(Buf *b, const char *data, Py_ssize_t n) {
    int r;
    if (n < 256) r = put_byte_be(b, 0xc4, (uint64_t)n, 1);
    else if (n < 65536) r = put_byte_be(b, 0xc5, (uint64_t)n, 2);
    else if (n <= 0xffffffffLL) r = put_byte_be(b, 0xc6, (uint64_t)n, 4);
    else return UNSUPPORTED;
    if (r != OK) return r;
    return put(b, data, n);
}

static int put_str(Buf *b, PyObject *o) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (!s) {
        PyErr_Clear(); /* not valid UTF-8 (a lone surrogate): the Python path raises */
        return UNSUPPORTED;
    }
    int r;
    if (n < 32) {
        unsigned char c = (unsigned char)(0xa0 | n);
        r = put(b, &c, 1);
    } else if (n < 256) r = put_byte_be(b, 0xd9, (uint64_t)n, 1);
    else if (n < 65536) r = put_byte_be(b, 0xda, (uint64_t)n, 2);
    else if (n <= 0xffffffffLL) r = put_byte_be(b, 0xdb, (uint64_t)n, 4);
    else return UNSUPPORTED;
    if (r != OK) return r;
    return put(b, s, n);
}

/* As PyFloat_Pack4 (msgpack's use_single_float): round to float32; a finite double beyond
 * float32's range is an OverflowError there. */
static int put_float(Buf *b, double d) {
    float f = (float)d;
    if (isinf(f) && !isinf(d)) return UNSUPPORTED;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return put_byte_be(b, 0xca, bits, 4);
}

/* An int (or int subclass) `o` as a long long: OK, UNSUPPORTED when it does not fit (`*overflow`
 * says which way), ERROR with an exception set. */
static int long_value(PyObject *o, long long *out, int *overflow) {
    *out = PyLong_AsLongLongAndOverflow(o, overflow);
    if (*overflow) return UNSUPPORTED;
    if (*out == -1 && PyErr_Occurred()) return ERROR;
    return OK;
}

/* An exact int as an int64 (UNSUPPORTED: another type, or out of range). */
static int as_int64(PyObject *o, int64_t *out) {
    if (!PyLong_CheckExact(o)) return UNSUPPORTED;
    int overflow;
    long long v;
    int r = long_value(o, &v, &overflow);
    if (r == OK) *out = v;
    return r;
}

static int put_obj(Buf *b, PyObject *o);

static int put_sequence(Buf *b, PyObject *o) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
    PyObject **items = PySequence_Fast_ITEMS(o);
    int r = put_array_header(b, n);
    for (Py_ssize_t i = 0; r == OK && i < n; i++) r = put_obj(b, items[i]);
    return r;
}

/* What msgpack's packer writes for the types a profile's body holds; anything else (None,
 * bool, dict, subclasses ...) is left to the Python path. */
static int put_obj(Buf *b, PyObject *o) {
    if (PyLong_CheckExact(o)) {
        int overflow;
        long long v;
        int r = long_value(o, &v, &overflow);
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return UNSUPPORTED;
            }
            return put_uint64(b, u);
        }
        return r == OK ? put_int(b, v) : r;
    }
    if (PyFloat_CheckExact(o)) return put_float(b, PyFloat_AS_DOUBLE(o));
    if (PyUnicode_CheckExact(o)) return put_str(b, o);
    if (PyBytes_CheckExact(o)) return put_bin(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
    if (PyList_CheckExact(o) || PyTuple_CheckExact(o)) return put_sequence(b, o);
    return UNSUPPORTED;
}

/* Python's floor division by a positive divisor. */
static int64_t floordiv(int64_t a, int64_t d) {
    int64_t q = a / d;
    if ((a % d) != 0 && a < 0) q -= 1;
    return q;
}

static int put_diff(Buf *b, int64_t a, int64_t c) {
    int64_t d;
    if (__builtin_sub_overflow(a, c, &d)) return UNSUPPORTED;
    return put_int(b, d);
}

/* [[head - bucket, *cell] for bucket, cell in ring.items()] (insertion order). */
static int put_ring(Buf *b, PyObject *ring, int64_t head) {
    if (!PyDict_CheckExact(ring)) return UNSUPPORTED;
    int r = put_array_header(b, PyDict_GET_SIZE(ring));
    Py_ssize_t pos = 0;
    PyObject *key, *cell;
    while (r == OK && PyDict_Next(ring, &pos, &key, &cell)) {
        int64_t bucket;
        if (!PyList_CheckExact(cell)) return UNSUPPORTED;
        if ((r = as_int64(key, &bucket)) != OK) return r;
        Py_ssize_t n = PyList_GET_SIZE(cell);
        if ((r = put_array_header(b, n + 1)) != OK) return r;
        if ((r = put_diff(b, head, bucket)) != OK) return r;
        for (Py_ssize_t i = 0; r == OK && i < n; i++) r = put_obj(b, PyList_GET_ITEM(cell, i));
    }
    return r;
}

typedef struct {
    int64_t key;
    PyObject *value;
} Entry;

static int entry_cmp(const void *x, const void *y) {
    int64_t a = ((const Entry *)x)->key, c = ((const Entry *)y)->key;
    return (a > c) - (a < c);
}

/* [key, value, ...] in key order (`sorted(d)`: the keys are distinct ints). */
static int put_sorted_pairs(Buf *b, PyObject *d) {
    if (!PyDict_CheckExact(d)) return UNSUPPORTED;
    Py_ssize_t n = PyDict_GET_SIZE(d);
    Entry local[32];
    Entry *entries = n <= 32 ? local : PyMem_Malloc(sizeof(Entry) * n);
    if (!entries) {
        PyErr_NoMemory();
        return ERROR;
    }
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    int r = OK;
    while (PyDict_Next(d, &pos, &key, &value)) {
        if ((r = as_int64(key, &entries[i].key)) != OK) goto done;
        entries[i++].value = value;
    }
    qsort(entries, n, sizeof(Entry), entry_cmp);
    r = put_array_header(b, 2 * n);
    for (i = 0; r == OK && i < n; i++) {
        if ((r = put_int(b, entries[i].key)) == OK) r = put_obj(b, entries[i].value);
    }
done:
    if (entries != local) PyMem_Free(entries);
    return r;
}

/* A Preferences' attributes. */
enum { P_TOTAL, P_SLOTS, P_NAMES, N_PREF_ATTRS };
static const char *const PREF_ATTR_NAMES[N_PREF_ATTRS] = {"total", "slots", "names"};
static PyObject *pref_attr_names[N_PREF_ATTRS];
static AttrCache pref_attrs = {.names = pref_attr_names, .n = N_PREF_ATTRS};

/* [total, [key, affinity, ...], [key, name, ...]] (udfs.codec._pref_out). */
static int put_preferences(Buf *b, PyObject *p) {
    int r = UNSUPPORTED;
    PyObject *total = attrcache_get(&pref_attrs, p, P_TOTAL);
    PyObject *slots = total ? attrcache_get(&pref_attrs, p, P_SLOTS) : NULL;
    PyObject *names = slots ? attrcache_get(&pref_attrs, p, P_NAMES) : NULL;
    if (!names) {
        r = ERROR;
    } else if ((r = put_array_header(b, 3)) == OK && (r = put_obj(b, total)) == OK &&
               (r = put_sorted_pairs(b, slots)) == OK) {
        r = put_sorted_pairs(b, names);
    }
    Py_XDECREF(total);
    Py_XDECREF(slots);
    Py_XDECREF(names);
    return r;
}

/* [last - t, item, ...] for (t, item) in pairs (udfs.codec._flat_pairs). */
static int put_pairs(Buf *b, PyObject *pairs, int64_t last) {
    if (!PyList_CheckExact(pairs)) return UNSUPPORTED;
    Py_ssize_t n = PyList_GET_SIZE(pairs);
    int r = put_array_header(b, 2 * n);
    for (Py_ssize_t i = 0; r == OK && i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        int64_t t;
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) return UNSUPPORTED;
        if ((r = as_int64(PyTuple_GET_ITEM(pair, 0), &t)) != OK) return r;
        if ((r = put_diff(b, last, t)) == OK) r = put_obj(b, PyTuple_GET_ITEM(pair, 1));
    }
    return r;
}

/* [last - start, last - end, events, ...] for the open sessions. */
static int put_sessions(Buf *b, PyObject *sessions, int64_t last) {
    if (!PyList_CheckExact(sessions)) return UNSUPPORTED;
    Py_ssize_t n = PyList_GET_SIZE(sessions);
    int r = put_array_header(b, 3 * n);
    for (Py_ssize_t i = 0; r == OK && i < n; i++) {
        PyObject *s = PyList_GET_ITEM(sessions, i);
        int64_t start, end;
        if (!PyList_CheckExact(s) || PyList_GET_SIZE(s) < 3) return UNSUPPORTED;
        if ((r = as_int64(PyList_GET_ITEM(s, 0), &start)) != OK) return r;
        if ((r = as_int64(PyList_GET_ITEM(s, 1), &end)) != OK) return r;
        if ((r = put_diff(b, last, start)) != OK) return r;
        if ((r = put_diff(b, last, end)) != OK) return r;
        r = put_obj(b, PyList_GET_ITEM(s, 2));
    }
    return r;
}

/* [v if v else 0 for v in hours] */
static int put_hours(Buf *b, PyObject *hours) {
    if (!PyList_CheckExact(hours)) return UNSUPPORTED;
    Py_ssize_t n = PyList_GET_SIZE(hours);
    int r = put_array_header(b, n);
    for (Py_ssize_t i = 0; r == OK && i < n; i++) {
        PyObject *v = PyList_GET_ITEM(hours, i);
        if (PyFloat_CheckExact(v) && PyFloat_AS_DOUBLE(v) == 0.0) r = put_int(b, 0);
        else if (PyFloat_CheckExact(v) || PyLong_CheckExact(v)) r = put_obj(b, v);
        else return UNSUPPORTED;
    }
    return r;
}

/* The 64-bit event id hashes as consecutive big-endian words, as bytes (udfs.codec._ids_out). */
static int put_ids(Buf *b, PyObject *ids) {
    if (!PyList_CheckExact(ids)) return UNSUPPORTED;
    Py_ssize_t n = PyList_GET_SIZE(ids);
    unsigned char local[8 * 64];
    unsigned char *out = n <= 64 ? local : PyMem_Malloc(8 * n);
    if (!out) {
        PyErr_NoMemory();
        return ERROR;
    }
    int r = OK;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(ids, i);
        if (!PyLong_CheckExact(v)) {
            r = UNSUPPORTED;
            break;
        }
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* negative or beyond 64 bits: struct.pack raises on the Python path */
            r = UNSUPPORTED;
            break;
        }
        for (int k = 0; k < 8; k++) out[8 * i + k] = (unsigned char)(u >> (56 - 8 * k));
    }
    if (r == OK) r = put_bin(b, (const char *)out, 8 * n);
    if (out != local) PyMem_Free(out);
    return r;
}

/* The profile's fields in body order; what each is written as. */
enum Kind { PLAIN, LAST, RING_SHORT, RING_MID, RING_DAY, HOURS, PREFS, PAIRS, SESSIONS, IDS, INT };
static const struct {
    const char *name;
    enum Kind kind;
} FIELDS[] = {
    {"epoch_ms", PLAIN}, {"version", PLAIN}, {"first_ms", PLAIN}, {"last_ms", LAST},
    {"counts", PLAIN}, {"spend_micros", PLAIN}, {"priced_purchases", PLAIN},
    {"other_purchases", PLAIN}, {"last_purchase_ms", PLAIN}, {"ring_short", RING_SHORT},
    {"ring_mid", RING_MID}, {"ring_day", RING_DAY}, {"retired_active_days", PLAIN},
    {"ref_ms", PLAIN}, {"activity", PLAIN}, {"decay", PLAIN}, {"hour_hist", HOURS},
    {"categories", PREFS}, {"brands", PREFS}, {"distinct_exact", PLAIN},
    {"distinct_hll", PLAIN}, {"recent_viewed", PAIRS}, {"recent_carted", PAIRS},
    {"pending_carts", PAIRS}, {"recent_purchases", PAIRS}, {"abandoned_carts", PLAIN},
    {"converted_carts", PLAIN}, {"sessions", SESSIONS}, {"sessions_closed", PLAIN},
    {"sessions_closed_events", PLAIN}, {"sessions_closed_ms", PLAIN},
    {"view_price_sum", PLAIN}, {"view_price_n", PLAIN}, {"buy_price_sum", PLAIN},
    {"buy_price_n", PLAIN}, {"recent_ids", IDS}, {"inactivity", INT}, {"timer_ms", PLAIN},
    {"explained_micros", PLAIN}, {"reasons", PLAIN},
};
#define N_FIELDS ((Py_ssize_t)(sizeof(FIELDS) / sizeof(FIELDS[0])))
static PyObject *field_names[N_FIELDS];
static AttrCache profile_attrs = {.names = field_names, .n = N_FIELDS};

static int put_field(Buf *b, enum Kind kind, PyObject *v, int64_t last, const int64_t *widths) {
    switch (kind) {
    case PLAIN:
    case LAST:
        return put_obj(b, v);
    case RING_SHORT:
    case RING_MID:
    case RING_DAY:
        return put_ring(b, v, floordiv(last, widths[kind - RING_SHORT]));
    case HOURS:
        return put_hours(b, v);
    case PREFS:
        return put_preferences(b, v);
    case PAIRS:
        return put_pairs(b, v, last);
    case SESSIONS:
        return put_sessions(b, v, last);
    case IDS:
        return put_ids(b, v);
    case INT: { /* int(p.inactivity): an int or an IntEnum member */
        if (!PyLong_Check(v) || PyBool_Check(v)) return UNSUPPORTED;
        int overflow;
        long long x;
        int r = long_value(v, &x, &overflow);
        return r == OK ? put_int(b, x) : r;
    }
    }
    return UNSUPPORTED;
}

static PyObject *encode_v3(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_v3(profile, ring_short_ms, ring_mid_ms, ring_day_ms)");
        return NULL;
    }
    int64_t widths[3];
    for (int i = 0; i < 3; i++) {
        widths[i] = PyLong_AsLongLong(args[1 + i]);
        if (widths[i] == -1 && PyErr_Occurred()) return NULL;
        if (widths[i] <= 0) {
            PyErr_SetString(PyExc_ValueError, "ring bucket widths must be positive");
            return NULL;
        }
    }
    PyObject *profile = args[0];
    PyObject *values[N_FIELDS];
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    Buf b;
    b.data = b.local;
    b.len = 0;
    b.cap = (Py_ssize_t)sizeof(b.local);
    int64_t last = 0;
    int r = OK;
    for (; got < N_FIELDS; got++) {
        values[got] = attrcache_get(&profile_attrs, profile, got);
        if (!values[got]) goto fail;
        if (FIELDS[got].kind == LAST && (r = as_int64(values[got], &last)) != OK) {
            got++;
            goto end;
        }
    }
    unsigned char version = FORMAT_V3;
    if ((r = put(&b, &version, 1)) != OK) goto end;
    if ((r = put_array_header(&b, N_FIELDS)) != OK) goto end;
    for (Py_ssize_t i = 0; i < N_FIELDS; i++) {
        if ((r = put_field(&b, FIELDS[i].kind, values[i], last, widths)) != OK) goto end;
    }
end:
    if (r == OK) {
        result = PyBytes_FromStringAndSize(b.data, b.len);
    } else if (r == UNSUPPORTED) {
        result = Py_NewRef(Py_NotImplemented);
    }
fail:
    for (Py_ssize_t i = 0; i < got; i++) Py_DECREF(values[i]);
    if (b.data != b.local) PyMem_Free(b.data);
    return result;
}

/* f32(x) -> float: `x` rounded to the nearest float32, as `udfs.sketches.f32_py` does it with
 * struct's '<f' (the same CPython packing routine, so OverflowError for a finite value beyond
 * float32's range, NaN and infinities kept), without its bytes and tuple. The profile's folds
 * call it several times per event. */
static PyObject *f32(PyObject *Py_UNUSED(module), PyObject *arg) {
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    char packed[4];
    if (PyFloat_Pack4(x, packed, 1) < 0) return NULL;
    double y = PyFloat_Unpack4(packed, 1);
    if (y == -1.0 && PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble(y);
}

/* f32_cast(x) -> float: `x` through a C cast to float and back, which is what an
 * array('f') stores and gives back (`udfs.sketches.f32_cast_py`): rounded to the nearest
 * float32, a finite value beyond its range becoming an infinity instead of an error. The fold
 * rounds its decayed sums this way on every event. */
static PyObject *f32_cast(PyObject *Py_UNUSED(module), PyObject *arg) {
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble((double)(float)x);
}

static PyMethodDef methods[] = {
    {"f32", f32, METH_O, "f32(x) -> float\nx rounded to the nearest float32 (udfs.sketches.f32)."},
    {"f32_cast", f32_cast, METH_O,
     "f32_cast(x) -> float\nx as an array('f') stores it (udfs.sketches.f32_cast)."},
    {"encode_v3", (PyCFunction)(void (*)(void))encode_v3, METH_FASTCALL,
     "encode_v3(profile, ring_short_ms, ring_mid_ms, ring_day_ms) -> bytes | NotImplemented\n"
     "The format-3 state bytes of a udfs.profile.Profile (NotImplemented: use the Python path)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "udfs._statecodec",
    "The profile's format-3 state encoding in C (see udfs/codec.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__statecodec(void) {
    for (Py_ssize_t i = 0; i < N_FIELDS; i++) {
        field_names[i] = PyUnicode_InternFromString(FIELDS[i].name);
        if (!field_names[i]) return NULL;
    }
    if (attrcache_intern(&pref_attrs, PREF_ATTR_NAMES) < 0) return NULL;
    return PyModule_Create(&module_def);
}
