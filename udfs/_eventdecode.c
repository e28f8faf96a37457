/* The common case of `udfs.events.decode_event` in C: a UserEvent that keeps the contract,
 * encoded the way producers encode it, parsed and checked in one pass over its bytes.
 *
 * decode(raw, now_ms, event_type) -> Event | None
 *
 * Returns the `udfs.events.Event` that the Python decoder returns for `raw`, or None whenever
 * the message is anything but plainly valid: then the caller runs the Python decoder, which
 * gives the event or the dead letter's reason and detail exactly as before. "Plainly valid":
 * every field is one the contract defines, with its wire type, at most once (also inside
 * event_time); every string is printable ASCII (0x20-0x7e); and every rule of
 * `udfs.events.validate_message` holds. Anything else (UTF-8 beyond ASCII, unknown fields of a
 * newer producer, a repeated field, a value the contract rejects) takes the Python path.
 * tests/unit/test_events.py checks both paths against each other on valid, hostile and random
 * messages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* udfs/events.py's contract limits (checked against the module's at import: see
 * udfs.events._fast_decoder). */
#define MAX_USER_ID_BYTES 256
#define MAX_EVENT_ID_BYTES 128
#define MAX_FIELD_BYTES 1024
#define MAX_MESSAGE_BYTES (16 * 1024)
#define MIN_EVENT_TIME_MS 946684800000LL
#define MAX_FUTURE_SKEW_MS (24LL * 3600 * 1000)
#define MAX_PRICE_MICROS 1000000000000000LL
#define MAX_QUANTITY 10000

enum { VIEW = 1, ADD_TO_CART, REMOVE_FROM_CART, FAVORITE, PURCHASE, SEARCH, ERASE };

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
    int present;
} Text;

static int read_varint(const unsigned char **p, const unsigned char *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return 0;
        unsigned char c = *(*p)++;
        if (shift == 63 && c > 1) return 0; /* beyond 64 bits */
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* A varint field, at most once (`*seen` marks it). */
static int read_varint_once(const unsigned char **p, const unsigned char *end, int *seen,
                            uint64_t *out) {
    if (*seen) return 0;
    *seen = 1;
    return read_varint(p, end, out);
}

static int printable_ascii(const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] > 0x7e) return 0;
    }
    return 1;
}

/* A length-delimited string field, at most once, printable ASCII, at most `limit` bytes. */
static int read_text(const unsigned char **p, const unsigned char *end, Text *t, Py_ssize_t limit) {
    uint64_t len;
    if (t->present || !read_varint(p, end, &len)) return 0;
    if (len > (uint64_t)(end - *p) || len > (uint64_t)limit) return 0;
    t->p = *p;
    t->n = (Py_ssize_t)len;
    t->present = 1;
    *p += len;
    return printable_ascii(t->p, t->n);
}

static PyObject *text_or_none(const Text *t) {
    if (!t->present) Py_RETURN_NONE;
    return PyUnicode_DecodeASCII((const char *)t->p, t->n, NULL);
}

/* google.protobuf.Timestamp: seconds (1, varint int64) and nanos (2, varint int32). */
static int read_timestamp(const unsigned char *p, const unsigned char *end, int64_t *seconds,
                          int64_t *nanos) {
    int seen_s = 0, seen_n = 0;
    *seconds = 0;
    *nanos = 0;
    while (p < end) {
        uint64_t key, v;
        if (!read_varint(&p, end, &key) || !read_varint(&p, end, &v)) return 0;
        if (key == (1 << 3 | 0) && !seen_s) {
            *seconds = (int64_t)v;
            seen_s = 1;
        } else if (key == (2 << 3 | 0) && !seen_n) {
            if (v >= 1000000000ULL) return 0; /* out of range, or negative */
            *nanos = (int64_t)v;
            seen_n = 1;
        } else {
            return 0;
        }
    }
    return 1;
}

static PyObject *decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(raw, now_ms, event_type)");
        return NULL;
    }
    PyObject *raw = args[0];
    if (!PyBytes_CheckExact(raw) || !PyType_Check(args[2])) Py_RETURN_NONE;
    int overflow;
    long long now_ms = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (overflow || (now_ms == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(raw);
    if (size > MAX_MESSAGE_BYTES) Py_RETURN_NONE;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    const unsigned char *end = p + size;

    Text event_id = {0}, user_id = {0}, item_id = {0}, category_id = {0}, brand = {0},
         currency = {0}, session_id = {0}, search_query = {0};
    uint64_t event_type = 0, channel = 0, price = 0, quantity = 1;
    int seen_type = 0, seen_channel = 0, seen_price = 0, seen_quantity = 0, seen_time = 0;
    int64_t seconds = 0, nanos = 0;

    while (p < end) {
        uint64_t key, v;
        if (!read_varint(&p, end, &key)) Py_RETURN_NONE;
        int ok;
        switch (key) {
        case 1 << 3 | 2: ok = read_text(&p, end, &event_id, MAX_EVENT_ID_BYTES); break;
        case 2 << 3 | 2: ok = read_text(&p, end, &user_id, MAX_USER_ID_BYTES); break;
        case 5 << 3 | 2: ok = read_text(&p, end, &item_id, MAX_FIELD_BYTES); break;
        case 6 << 3 | 2: ok = read_text(&p, end, &category_id, MAX_FIELD_BYTES); break;
        case 7 << 3 | 2: ok = read_text(&p, end, &brand, MAX_FIELD_BYTES); break;
        case 9 << 3 | 2: ok = read_text(&p, end, &currency, 3); break;
        case 11 << 3 | 2: ok = read_text(&p, end, &session_id, MAX_FIELD_BYTES); break;
        case 12 << 3 | 2: ok = read_text(&p, end, &search_query, MAX_FIELD_BYTES); break;
        case 3 << 3 | 0:
            ok = read_varint_once(&p, end, &seen_type, &event_type);
            break;
        case 13 << 3 | 0:
            ok = read_varint_once(&p, end, &seen_channel, &channel);
            break;
        case 8 << 3 | 0:
            ok = read_varint_once(&p, end, &seen_price, &price);
            break;
        case 10 << 3 | 0:
            ok = read_varint_once(&p, end, &seen_quantity, &quantity);
            break;
        case 4 << 3 | 2:
            ok = !seen_time && read_varint(&p, end, &v) && v <= (uint64_t)(end - p) &&
                 read_timestamp(p, p + v, &seconds, &nanos);
            if (ok) p += v;
            seen_time = 1;
            break;
        default:
            ok = 0;
        }
        if (!ok) Py_RETURN_NONE;
    }

    /* validate_message's rules, for printable ASCII text (bytes = characters, no control
     * characters, and whitespace is only ' '). */
    if (event_id.n == 0 || user_id.n == 0) Py_RETURN_NONE;
    int blank = 1;
    for (Py_ssize_t i = 0; i < user_id.n; i++) blank &= user_id.p[i] == ' ';
    if (blank) Py_RETURN_NONE;
    if (event_type < VIEW || event_type > ERASE || channel > 5) Py_RETURN_NONE;
    if (!seen_time || seconds > 9000000000000LL || seconds < -9000000000000LL) Py_RETURN_NONE;
    int64_t event_time_ms = seconds * 1000 + nanos / 1000000;
    if (event_time_ms < MIN_EVENT_TIME_MS || event_time_ms > now_ms + MAX_FUTURE_SKEW_MS)
        Py_RETURN_NONE;
    if (event_type <= PURCHASE && item_id.n == 0) Py_RETURN_NONE;
    if (event_type == SEARCH && search_query.n == 0) Py_RETURN_NONE;
    if (seen_price && (price > (uint64_t)MAX_PRICE_MICROS || currency.n == 0)) Py_RETURN_NONE;
    if (currency.present) {
        if (currency.n != 3) Py_RETURN_NONE;
        for (int i = 0; i < 3; i++) {
            if (currency.p[i] < 'A' || currency.p[i] > 'Z') Py_RETURN_NONE;
        }
    }
    if (seen_quantity && (quantity < 1 || quantity > MAX_QUANTITY)) Py_RETURN_NONE;

    PyObject *values = PyTuple_New(14);
    if (!values) return NULL;
    PyObject *items[14] = {
        text_or_none(&event_id), text_or_none(&user_id), PyLong_FromUnsignedLongLong(event_type),
        PyLong_FromLongLong(event_time_ms), text_or_none(&item_id), text_or_none(&category_id),
        text_or_none(&brand),
        seen_price ? PyLong_FromUnsignedLongLong(price) : Py_NewRef(Py_None),
        text_or_none(&currency), PyLong_FromUnsignedLongLong(quantity),
        text_or_none(&session_id), text_or_none(&search_query),
        PyLong_FromUnsignedLongLong(channel), Py_NewRef(raw),
    };
    int failed = 0;
    for (int i = 0; i < 14; i++) {
        if (!items[i]) failed = 1;
        PyTuple_SET_ITEM(values, i, items[i]); /* NULL slots are skipped by the dealloc */
    }
    if (failed) {
        Py_DECREF(values);
        return NULL;
    }
    /* Event(*values): a NamedTuple is a tuple subclass; tuple.__new__(Event, values) makes it
     * without the Python-level __new__. */
    PyObject *new_args = PyTuple_Pack(1, values);
    Py_DECREF(values);
    if (!new_args) return NULL;
    PyObject *event = PyTuple_Type.tp_new((PyTypeObject *)args[2], new_args, NULL);
    Py_DECREF(new_args);
    return event;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
     "decode(raw, now_ms, event_type) -> Event | None\n"
     "A plainly valid UserEvent decoded and checked in C (None: use the Python decoder)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "udfs._eventdecode",
    "The common case of udfs.events.decode_event in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__eventdecode(void) {
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "MAX_USER_ID_BYTES", MAX_USER_ID_BYTES) ||
        PyModule_AddIntConstant(m, "MAX_EVENT_ID_BYTES", MAX_EVENT_ID_BYTES) ||
        PyModule_AddIntConstant(m, "MAX_FIELD_BYTES", MAX_FIELD_BYTES) ||
        PyModule_AddIntConstant(m, "MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES) ||
        PyModule_AddObject(m, "MIN_EVENT_TIME_MS", PyLong_FromLongLong(MIN_EVENT_TIME_MS)) ||
        PyModule_AddObject(m, "MAX_FUTURE_SKEW_MS", PyLong_FromLongLong(MAX_FUTURE_SKEW_MS)) ||
        PyModule_AddObject(m, "MAX_PRICE_MICROS", PyLong_FromLongLong(MAX_PRICE_MICROS)) ||
        PyModule_AddIntConstant(m, "MAX_QUANTITY", MAX_QUANTITY)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
