/* Reading a fixed set of attributes of one class many times, without PyObject_GetAttr's lookup
 * on every read: udfs/_features.c and udfs/_statecodec.c read ~40 attributes of the profile on
 * every event. mypyc's classes (and slotted classes' properties) expose their attributes as
 * getset descriptors; the cache keeps each descriptor's C getter for the class it last saw and
 * calls it directly. That is what PyObject_GenericGetAttr ends up calling for a data descriptor
 * (which an instance's __dict__ cannot shadow), so the value, and any AttributeError, is the
 * same. Anything else (another class, a member or plain attribute, a custom __getattribute__,
 * a class changed since: its version tag moved) takes PyObject_GetAttr.
 *
 * Include once per extension module; one AttrCache per class (static, used under the GIL). */
#ifndef UDFS_ATTRCACHE_H
#define UDFS_ATTRCACHE_H

#include <Python.h>

#define ATTRCACHE_MAX 64

typedef struct {
    PyTypeObject *type; /* the class the getters were taken from (a strong reference) */
    unsigned int version; /* its tp_version_tag then (0: the cache is not used) */
    Py_ssize_t n;
    PyObject **names; /* interned attribute names, n of them */
    getter get[ATTRCACHE_MAX]; /* NULL: PyObject_GetAttr for this one */
    void *closure[ATTRCACHE_MAX];
} AttrCache;

/* Interns the cache's attribute names (c->n of them, into c->names): 0, or -1 with an exception
 * set. Call once from the module's init. */
static int attrcache_intern(AttrCache *c, const char *const *names) {
    for (Py_ssize_t i = 0; i < c->n; i++) {
        if (!(c->names[i] = PyUnicode_InternFromString(names[i]))) return -1;
    }
    return 0;
}

static void attrcache_fill(AttrCache *c, PyTypeObject *type) {
    Py_INCREF(type);
    Py_XSETREF(c->type, type);
    c->version = 0;
    for (Py_ssize_t i = 0; i < c->n; i++) c->get[i] = NULL;
    if (type->tp_getattro != PyObject_GenericGetAttr || c->n > ATTRCACHE_MAX) return;
    for (Py_ssize_t i = 0; i < c->n; i++) {
        PyObject *descr = _PyType_Lookup(type, c->names[i]); /* borrowed; assigns a version tag */
        if (descr != NULL && Py_IS_TYPE(descr, &PyGetSetDescr_Type)) {
            PyGetSetDef *def = ((PyGetSetDescrObject *)descr)->d_getset;
            c->get[i] = def->get;
            c->closure[i] = def->closure;
        }
    }
    if (PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) c->version = type->tp_version_tag;
}

/* obj.<names[i]>: a new reference, or NULL with an exception set. */
static inline PyObject *attrcache_get(AttrCache *c, PyObject *obj, Py_ssize_t i) {
    PyTypeObject *type = Py_TYPE(obj);
    if (type != c->type || !PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG) ||
        type->tp_version_tag != c->version) {
        attrcache_fill(c, type);
    }
    getter get = c->version != 0 ? c->get[i] : NULL;
    return get != NULL ? get(obj, c->closure[i]) : PyObject_GetAttr(obj, c->names[i]);
}

#endif
