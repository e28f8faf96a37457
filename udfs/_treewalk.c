/* udfs._treewalk: udfs.trees.TreeModel.raw over contiguous C arrays.
 *
 * The same walk as udfs/trees.py (which documents why it is LightGBM's own prediction), with the
 * nodes of all trees in one array of 32-byte records in tree order instead of one Python object
 * per node. Inside the job the keyed thread reaches the model with cold CPU caches on every event
 * (RocksDB, the JVM and thousands of cached profiles pass through them in between): the object
 * walk then waits on memory for most of its ~250 node visits, this one reads ~20 KB front to back.
 *
 * Built by `python -m udfs.native build` with the mypyc modules; udfs.trees uses it only when the
 * native build is selected (udfs._impl), and tests/unit/test_trees.py compares the two walks and
 * LightGBM bit for bit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* LightGBM's kZeroThreshold (1e-35f) as a double, as udfs.trees.K_ZERO_THRESHOLD. */
#define K_ZERO_THRESHOLD 1.0000000180025095e-35

typedef struct {
    double threshold;
    int32_t feature;
    int32_t left; /* >= 0: a node; < 0: leaf ~child */
    int32_t right;
    int32_t on_nan;
    int32_t on_zero;
    int32_t pad;
} Node;

typedef struct {
    PyObject_HEAD
    Node *nodes;
    Py_ssize_t n_nodes;
    double *leaves;
    Py_ssize_t n_leaves;
    int32_t *roots;
    Py_ssize_t n_roots;
    Py_ssize_t width; /* the vector must have at least this many items */
    /* score(): the probability is 1 / (1 + exp(-sigmoid * raw)), then the calibration
     * (udfs.calibration.Calibration.apply: CAL_IDENTITY, CAL_PLATT with a and b, CAL_ISOTONIC
     * with the points x, y), set by set_output(). */
    double sigmoid;
    int cal_kind;
    double cal_a, cal_b;
    double *cal_x, *cal_y;
    Py_ssize_t cal_n;
} Forest;

enum { CAL_IDENTITY = 0, CAL_PLATT = 1, CAL_ISOTONIC = 2 };
#define RAW_EPS 1e-7 /* udfs.calibration.RAW_EPS */

static void forest_dealloc(Forest *self) {
    PyMem_Free(self->nodes);
    PyMem_Free(self->leaves);
    PyMem_Free(self->roots);
    PyMem_Free(self->cal_x);
    PyMem_Free(self->cal_y);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* list of ints -> int32 array of `n` items (n checked by the caller); -1 on error. */
static int read_ints(PyObject *list, Py_ssize_t n, int32_t *out, Py_ssize_t stride) {
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyList_GET_ITEM(list, i));
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v < INT32_MIN || v > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "node index out of range");
            return -1;
        }
        *(int32_t *)((char *)out + i * stride) = (int32_t)v;
    }
    return 0;
}

static int check_list(PyObject *obj, const char *name, Py_ssize_t n) {
    if (!PyList_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list", name);
        return -1;
    }
    if (n >= 0 && PyList_GET_SIZE(obj) != n) {
        PyErr_Format(PyExc_ValueError, "%s has %zd items, expected %zd", name,
                     PyList_GET_SIZE(obj), n);
        return -1;
    }
    return 0;
}

static int check_child(int32_t c, Py_ssize_t n_nodes, Py_ssize_t n_leaves) {
    if (c >= 0 ? c < n_nodes : ~c < n_leaves) return 0;
    PyErr_Format(PyExc_ValueError, "child %d points outside the model", (int)c);
    return -1;
}

/* Forest(feature, threshold, left, right, on_nan, on_zero, leaf_value, roots) */
static int forest_init(Forest *self, PyObject *args, PyObject *kwds) {
    PyObject *feature, *threshold, *left, *right, *on_nan, *on_zero, *leaf_value, *roots;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &feature, &threshold, &left, &right, &on_nan,
                          &on_zero, &leaf_value, &roots))
        return -1;
    if (check_list(feature, "feature", -1) < 0) return -1;
    Py_ssize_t n = PyList_GET_SIZE(feature);
    if (check_list(threshold, "threshold", n) < 0 || check_list(left, "left", n) < 0 ||
        check_list(right, "right", n) < 0 || check_list(on_nan, "on_nan", n) < 0 ||
        check_list(on_zero, "on_zero", n) < 0 || check_list(leaf_value, "leaf_value", -1) < 0 ||
        check_list(roots, "roots", -1) < 0)
        return -1;
    PyMem_Free(self->nodes);
    PyMem_Free(self->leaves);
    PyMem_Free(self->roots);
    self->n_nodes = n;
    self->n_leaves = PyList_GET_SIZE(leaf_value);
    self->n_roots = PyList_GET_SIZE(roots);
    self->sigmoid = 1.0; /* score(): LightGBM's default sigmoid, no calibration */
    self->cal_kind = CAL_IDENTITY;
    self->nodes = PyMem_Calloc(n ? n : 1, sizeof(Node));
    self->leaves = PyMem_Calloc(self->n_leaves ? self->n_leaves : 1, sizeof(double));
    self->roots = PyMem_Calloc(self->n_roots ? self->n_roots : 1, sizeof(int32_t));
    if (!self->nodes || !self->leaves || !self->roots) {
        PyErr_NoMemory();
        return -1;
    }
    const Py_ssize_t stride = sizeof(Node);
    if (read_ints(feature, n, &self->nodes[0].feature, stride) < 0 ||
        read_ints(left, n, &self->nodes[0].left, stride) < 0 ||
        read_ints(right, n, &self->nodes[0].right, stride) < 0 ||
        read_ints(on_nan, n, &self->nodes[0].on_nan, stride) < 0 ||
        read_ints(on_zero, n, &self->nodes[0].on_zero, stride) < 0 ||
        read_ints(roots, self->n_roots, self->roots, sizeof(int32_t)) < 0)
        return -1;
    self->width = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Node *node = &self->nodes[i];
        double t = PyFloat_AsDouble(PyList_GET_ITEM(threshold, i));
        if (t == -1.0 && PyErr_Occurred()) return -1;
        node->threshold = t;
        if (node->feature < 0) {
            PyErr_SetString(PyExc_ValueError, "negative feature index");
            return -1;
        }
        if (node->feature + 1 > self->width) self->width = node->feature + 1;
        if (check_child(node->left, n, self->n_leaves) < 0 ||
            check_child(node->right, n, self->n_leaves) < 0 ||
            check_child(node->on_nan, n, self->n_leaves) < 0 ||
            check_child(node->on_zero, n, self->n_leaves) < 0)
            return -1;
    }
    for (Py_ssize_t i = 0; i < self->n_leaves; i++) {
        double v = PyFloat_AsDouble(PyList_GET_ITEM(leaf_value, i));
        if (v == -1.0 && PyErr_Occurred()) return -1;
        self->leaves[i] = v;
    }
    for (Py_ssize_t i = 0; i < self->n_roots; i++)
        if (check_child(self->roots[i], n, self->n_leaves) < 0) return -1;
    return 0;
}

/* The sum of the trees' leaf values for `vector` into *out; -1 with an exception set on error. */
static int forest_walk(Forest *self, PyObject *vector, double *out) {
    PyObject *seq = PySequence_Fast(vector, "the feature vector must be a sequence");
    if (seq == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(seq) < self->width) {
        PyErr_Format(PyExc_IndexError, "the feature vector has %zd items, the model reads %zd",
                     PySequence_Fast_GET_SIZE(seq), self->width);
        Py_DECREF(seq);
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    const Node *nodes = self->nodes;
    /* Ask for every line of the model up front: the walk below then finds most of them arriving
     * instead of missing one at a time (many misses in flight rather than one). */
    const char *bytes = (const char *)nodes;
    for (Py_ssize_t off = 0; off < self->n_nodes * (Py_ssize_t)sizeof(Node); off += 64)
        __builtin_prefetch(bytes + off);
    bytes = (const char *)self->leaves;
    for (Py_ssize_t off = 0; off < self->n_leaves * (Py_ssize_t)sizeof(double); off += 64)
        __builtin_prefetch(bytes + off);
    double total = 0.0;
    for (Py_ssize_t r = 0; r < self->n_roots; r++) {
        int32_t node = self->roots[r];
        while (node >= 0) {
            const Node *n = &nodes[node];
            PyObject *item = items[n->feature];
            double x;
            if (PyFloat_CheckExact(item)) {
                x = PyFloat_AS_DOUBLE(item);
            } else {
                x = PyFloat_AsDouble(item);
                if (x == -1.0 && PyErr_Occurred()) {
                    Py_DECREF(seq);
                    return -1;
                }
            }
            if (isnan(x))
                node = n->on_nan;
            else if (-K_ZERO_THRESHOLD <= x && x <= K_ZERO_THRESHOLD)
                node = n->on_zero;
            else if (x <= n->threshold)
                node = n->left;
            else
                node = n->right;
        }
        total += self->leaves[~node];
    }
    Py_DECREF(seq);
    *out = total;
    return 0;
}

static PyObject *forest_raw(Forest *self, PyObject *vector) {
    double total;
    if (forest_walk(self, vector, &total) < 0) return NULL;
    return PyFloat_FromDouble(total);
}

/* Python's math.exp: OverflowError where the result does not fit a double. */
static int checked_exp(double x, double *out) {
    double e = exp(x);
    if (isinf(e) && isfinite(x)) {
        PyErr_SetString(PyExc_OverflowError, "math range error");
        return -1;
    }
    *out = e;
    return 0;
}

/* udfs.trees.TreeModel.probability, then udfs.calibration.Calibration.apply, with the same
 * operations in the same order (the build turns off floating-point contraction): bit for bit
 * the same value, which udfs.scoring checks at load. */
static PyObject *forest_score(Forest *self, PyObject *vector) {
    double raw, e;
    if (forest_walk(self, vector, &raw) < 0) return NULL;
    if (checked_exp(-self->sigmoid * raw, &e) < 0) return NULL;
    double p = 1.0 / (1.0 + e);
    if (isnan(p)) return PyFloat_FromDouble(p);
    if (self->cal_kind == CAL_PLATT) {
        double r = p < RAW_EPS ? RAW_EPS : (p > 1.0 - RAW_EPS ? 1.0 - RAW_EPS : p);
        double z = self->cal_a * log(r / (1.0 - r)) + self->cal_b;
        if (z >= 0.0) {
            if (checked_exp(-z, &e) < 0) return NULL;
            return PyFloat_FromDouble(1.0 / (1.0 + e));
        }
        if (checked_exp(z, &e) < 0) return NULL;
        return PyFloat_FromDouble(e / (1.0 + e));
    }
    if (self->cal_kind == CAL_ISOTONIC) {
        const double *x = self->cal_x, *y = self->cal_y;
        Py_ssize_t n = self->cal_n;
        if (p <= x[0]) return PyFloat_FromDouble(y[0]);
        if (p >= x[n - 1]) return PyFloat_FromDouble(y[n - 1]);
        Py_ssize_t lo = 0, hi = n; /* bisect_right: the first i with p < x[i] */
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            if (p < x[mid])
                hi = mid;
            else
                lo = mid + 1;
        }
        double x0 = x[lo - 1], y0 = y[lo - 1];
        return PyFloat_FromDouble(y0 + (y[lo] - y0) * (p - x0) / (x[lo] - x0));
    }
    return PyFloat_FromDouble(p);
}

/* list of floats -> a new array of its n items (NULL with an exception on error). */
static double *read_doubles(PyObject *list, Py_ssize_t n) {
    double *out = PyMem_Malloc((n ? n : 1) * sizeof(double));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyFloat_AsDouble(PyList_GET_ITEM(list, i));
        if (out[i] == -1.0 && PyErr_Occurred()) {
            PyMem_Free(out);
            return NULL;
        }
    }
    return out;
}

/* set_output(sigmoid, kind, a, b, x, y): what score() applies after the walk. */
static PyObject *forest_set_output(Forest *self, PyObject *args) {
    double sigmoid, a, b;
    int kind;
    PyObject *xs, *ys;
    if (!PyArg_ParseTuple(args, "diddOO", &sigmoid, &kind, &a, &b, &xs, &ys)) return NULL;
    if (kind != CAL_IDENTITY && kind != CAL_PLATT && kind != CAL_ISOTONIC) {
        PyErr_Format(PyExc_ValueError, "unknown calibration kind %d", kind);
        return NULL;
    }
    if (check_list(xs, "x", -1) < 0) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(xs);
    if (check_list(ys, "y", n) < 0) return NULL;
    if (kind == CAL_ISOTONIC && n == 0) {
        PyErr_SetString(PyExc_ValueError, "isotonic calibration needs at least one point");
        return NULL;
    }
    double *x = read_doubles(xs, n);
    if (x == NULL) return NULL;
    double *y = read_doubles(ys, n);
    if (y == NULL) {
        PyMem_Free(x);
        return NULL;
    }
    PyMem_Free(self->cal_x);
    PyMem_Free(self->cal_y);
    self->cal_x = x;
    self->cal_y = y;
    self->cal_n = n;
    self->sigmoid = sigmoid;
    self->cal_kind = kind;
    self->cal_a = a;
    self->cal_b = b;
    Py_RETURN_NONE;
}

static PyMethodDef forest_methods[] = {
    {"raw", (PyCFunction)forest_raw, METH_O,
     "raw(vector) -> float: the sum of the trees' leaf values for the feature vector"},
    {"score", (PyCFunction)forest_score, METH_O,
     "score(vector) -> float: the calibrated probability (see set_output)"},
    {"set_output", (PyCFunction)forest_set_output, METH_VARARGS,
     "set_output(sigmoid, kind, a, b, x, y): the sigmoid and calibration score() applies"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ForestType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "udfs._treewalk.Forest",
    .tp_basicsize = sizeof(Forest),
    .tp_dealloc = (destructor)forest_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A LightGBM model's trees as contiguous arrays (see udfs.trees).",
    .tp_methods = forest_methods,
    .tp_init = (initproc)forest_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "udfs._treewalk", "udfs.trees' walk in C.", -1, NULL,
};

PyMODINIT_FUNC PyInit__treewalk(void) {
    if (PyType_Ready(&ForestType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ForestType);
    if (PyModule_AddObject(m, "Forest", (PyObject *)&ForestType) < 0) {
        Py_DECREF(&ForestType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
