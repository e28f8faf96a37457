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
#include <string.h>

/* LightGBM's kZeroThreshold (1e-35f) as a double, as udfs.trees.K_ZERO_THRESHOLD. */
#define K_ZERO_THRESHOLD 1.0000000180025095e-35

typedef struct {
    double threshold;
    int32_t feature;
    int32_t left; /* >= 0: a node; < 0: leaf ~child */
    int32_t right;
    int32_t on_nan;
    int32_t on_zero;
    int32_t input; /* the split's model input (LightGBM's split_feature): SHAP's index */
} Node;

#define PATTERN_MAX_NODES 10

/* phi[input] += delta, one of a tree's TreeSHAP additions in the order it makes them. */
typedef struct Addition {
    int32_t input;
    double delta;
} Addition;

typedef struct Additions {
    Py_ssize_t n;
    Addition items[];
} Additions;

/* One element of TreeSHAP's unique path (LightGBM's Tree::PathElement). */
typedef struct {
    int feature_index;
    double zero_fraction;
    double one_fraction;
    double pweight;
} PathElement;

/* What contributions() needs, set by set_shap() (all zero before): the model's inputs
 * (n_inputs, and where each sits in the vector), the training rows through each node and leaf,
 * each tree's expected value, and TreeSHAP's path and output buffers. */
typedef struct {
    Py_ssize_t n_inputs;
    Py_ssize_t n_trees;
    int32_t *input_at;
    double *node_count;
    double *leaf_count;
    double *expected;
    PathElement *path;
    double *phi;
    /* A tree's contributions depend on the row only through the child the row takes at each of
     * its nodes: per tree with at most PATTERN_MAX_NODES nodes, the additions to phi its
     * TreeSHAP makes for each such pattern, recorded the first time the pattern is seen
     * (NULL until then) and replayed in the same order after (the same sums, bit for bit). */
    Additions ***patterns; /* per tree: NULL, or 2^n_internal[r] slots */
    int32_t *n_internal;
    Py_ssize_t *pattern_of; /* per tree: this call's pattern */
    Addition *scratch;
} Shap;

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
    Shap shap; /* contributions() and reasons(), set by set_shap() */
} Forest;

enum { CAL_IDENTITY = 0, CAL_PLATT = 1, CAL_ISOTONIC = 2 };
#define RAW_EPS 1e-7 /* udfs.calibration.RAW_EPS */

/* Frees everything `s` holds (also a partly built one) and zeroes it. */
static void shap_free(Shap *s) {
    for (Py_ssize_t r = 0; s->patterns != NULL && r < s->n_trees; r++) {
        Additions **slots = s->patterns[r];
        if (slots == NULL) continue;
        for (Py_ssize_t p = 0; p < ((Py_ssize_t)1 << s->n_internal[r]); p++)
            PyMem_Free(slots[p]);
        PyMem_Free(slots);
    }
    PyMem_Free(s->patterns);
    PyMem_Free(s->n_internal);
    PyMem_Free(s->pattern_of);
    PyMem_Free(s->scratch);
    PyMem_Free(s->input_at);
    PyMem_Free(s->node_count);
    PyMem_Free(s->leaf_count);
    PyMem_Free(s->expected);
    PyMem_Free(s->path);
    PyMem_Free(s->phi);
    memset(s, 0, sizeof(*s));
}

static void forest_dealloc(Forest *self) {
    shap_free(&self->shap);
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
    shap_free(&self->shap); /* no contributions until set_shap() */
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

/* The child of `node` the row's value goes to: one step of the walk (and TreeSHAP's hot
 * child); -1 with an exception set when the vector's item is not a number. */
static inline int hot_child(const Node *n, PyObject **items, int32_t *out) {
    PyObject *item = items[n->feature];
    double x;
    if (PyFloat_CheckExact(item)) {
        x = PyFloat_AS_DOUBLE(item);
    } else {
        x = PyFloat_AsDouble(item);
        if (x == -1.0 && PyErr_Occurred()) return -1;
    }
    if (isnan(x))
        *out = n->on_nan;
    else if (-K_ZERO_THRESHOLD <= x && x <= K_ZERO_THRESHOLD)
        *out = n->on_zero;
    else if (x <= n->threshold)
        *out = n->left;
    else
        *out = n->right;
    return 0;
}

/* `vector` as a sequence whose items can be read in place (a new reference), or NULL with an
 * exception when it is not a sequence or is too short for the model. */
static PyObject *vector_items(const Forest *self, PyObject *vector) {
    PyObject *seq = PySequence_Fast(vector, "the feature vector must be a sequence");
    if (seq == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) < self->width) {
        PyErr_Format(PyExc_IndexError, "the feature vector has %zd items, the model reads %zd",
                     PySequence_Fast_GET_SIZE(seq), self->width);
        Py_DECREF(seq);
        return NULL;
    }
    return seq;
}

/* The sum of the trees' leaf values for `vector` into *out; -1 with an exception set on error. */
static int forest_walk(Forest *self, PyObject *vector, double *out) {
    PyObject *seq = vector_items(self, vector);
    if (seq == NULL) return -1;
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
            if (hot_child(&nodes[node], items, &node) < 0) {
                Py_DECREF(seq);
                return -1;
            }
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

/* ---- SHAP values: LightGBM's TreeSHAP (src/io/tree.cpp: ExtendPath, UnwindPath,
 * UnwoundPathSum, TreeSHAP; include/LightGBM/tree.h: PredictContrib, ExpectedValue;
 * src/boosting/gbdt_prediction.cpp: PredictContrib), the same operations in the same order, so
 * the values are LightGBM's bit for bit (udfs.scoring checks this at load, tests/unit/test_trees.py
 * on thousands of rows). The tree is walked as forest_walk walks it: a node's "hot" child is the
 * one the row goes to. */

static void extend_path(PathElement *unique_path, int unique_depth, double zero_fraction,
                        double one_fraction, int feature_index) {
    unique_path[unique_depth].feature_index = feature_index;
    unique_path[unique_depth].zero_fraction = zero_fraction;
    unique_path[unique_depth].one_fraction = one_fraction;
    unique_path[unique_depth].pweight = (unique_depth == 0 ? 1 : 0);
    for (int i = unique_depth - 1; i >= 0; i--) {
        unique_path[i + 1].pweight +=
            one_fraction * unique_path[i].pweight * (i + 1) / (double)(unique_depth + 1);
        unique_path[i].pweight = zero_fraction * unique_path[i].pweight * (unique_depth - i) /
                                 (double)(unique_depth + 1);
    }
}

static void unwind_path(PathElement *unique_path, int unique_depth, int path_index) {
    const double one_fraction = unique_path[path_index].one_fraction;
    const double zero_fraction = unique_path[path_index].zero_fraction;
    double next_one_portion = unique_path[unique_depth].pweight;
    for (int i = unique_depth - 1; i >= 0; --i) {
        if (one_fraction != 0) {
            const double tmp = unique_path[i].pweight;
            unique_path[i].pweight =
                next_one_portion * (unique_depth + 1) / (double)((i + 1) * one_fraction);
            next_one_portion = tmp - unique_path[i].pweight * zero_fraction * (unique_depth - i) /
                                         (double)(unique_depth + 1);
        } else {
            unique_path[i].pweight = (unique_path[i].pweight * (unique_depth + 1)) /
                                     (double)(zero_fraction * (unique_depth - i));
        }
    }
    for (int i = path_index; i < unique_depth; ++i) {
        unique_path[i].feature_index = unique_path[i + 1].feature_index;
        unique_path[i].zero_fraction = unique_path[i + 1].zero_fraction;
        unique_path[i].one_fraction = unique_path[i + 1].one_fraction;
    }
}

static double unwound_path_sum(const PathElement *unique_path, int unique_depth,
                               int path_index) {
    const double one_fraction = unique_path[path_index].one_fraction;
    const double zero_fraction = unique_path[path_index].zero_fraction;
    double next_one_portion = unique_path[unique_depth].pweight;
    double total = 0;
    for (int i = unique_depth - 1; i >= 0; --i) {
        if (one_fraction != 0) {
            const double tmp =
                next_one_portion * (unique_depth + 1) / (double)((i + 1) * one_fraction);
            total += tmp;
            next_one_portion =
                unique_path[i].pweight -
                tmp * zero_fraction * ((unique_depth - i) / (double)(unique_depth + 1));
        } else {
            total += (unique_path[i].pweight / zero_fraction) /
                     ((unique_depth - i) / (double)(unique_depth + 1));
        }
    }
    return total;
}

static inline double data_count(const Forest *f, int32_t node) {
    return node >= 0 ? f->shap.node_count[node] : f->shap.leaf_count[~node];
}

/* TreeSHAP of the tree below `node`, its additions to phi appended to rec (*len so far). */
static int tree_shap(const Forest *f, PyObject **items, Addition *rec, Py_ssize_t *len,
                     int32_t node, int unique_depth, PathElement *parent_unique_path,
                     double parent_zero_fraction, double parent_one_fraction,
                     int parent_feature_index) {
    PathElement *unique_path = parent_unique_path + unique_depth;
    if (unique_depth > 0)
        memcpy(unique_path, parent_unique_path, unique_depth * sizeof(PathElement));
    extend_path(unique_path, unique_depth, parent_zero_fraction, parent_one_fraction,
                parent_feature_index);
    if (node < 0) {
        for (int i = 1; i <= unique_depth; ++i) {
            const double w = unwound_path_sum(unique_path, unique_depth, i);
            const PathElement *el = &unique_path[i];
            rec[*len].input = el->feature_index;
            rec[*len].delta = w * (el->one_fraction - el->zero_fraction) * f->leaves[~node];
            *len += 1;
        }
        return 0;
    }
    const Node *n = &f->nodes[node];
    int32_t hot_index;
    if (hot_child(n, items, &hot_index) < 0) return -1;
    const int32_t cold_index = (hot_index == n->left ? n->right : n->left);
    const double w = data_count(f, node);
    const double hot_zero_fraction = data_count(f, hot_index) / w;
    const double cold_zero_fraction = data_count(f, cold_index) / w;
    double incoming_zero_fraction = 1;
    double incoming_one_fraction = 1;
    int path_index = 0;
    for (; path_index <= unique_depth; ++path_index) {
        if (unique_path[path_index].feature_index == n->input) break;
    }
    if (path_index != unique_depth + 1) {
        incoming_zero_fraction = unique_path[path_index].zero_fraction;
        incoming_one_fraction = unique_path[path_index].one_fraction;
        unwind_path(unique_path, unique_depth, path_index);
        unique_depth -= 1;
    }
    if (tree_shap(f, items, rec, len, hot_index, unique_depth + 1, unique_path,
                  hot_zero_fraction * incoming_zero_fraction, incoming_one_fraction, n->input) < 0)
        return -1;
    return tree_shap(f, items, rec, len, cold_index, unique_depth + 1, unique_path,
                     cold_zero_fraction * incoming_zero_fraction, 0, n->input);
}

/* vector_items for contributions() and input_key(), which need set_shap() first. */
static PyObject *shap_items(const Forest *self, PyObject *vector) {
    if (self->shap.n_inputs == 0) {
        PyErr_SetString(PyExc_RuntimeError, "set_shap() was not called");
        return NULL;
    }
    return vector_items(self, vector);
}

/* phi[0 .. n_inputs] = the contributions of `vector` (the bias last); -1 with an exception. */
static int forest_shap(Forest *self, PyObject *vector) {
    PyObject *seq = shap_items(self, vector);
    if (seq == NULL) return -1;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    double *phi = self->shap.phi;
    const Py_ssize_t bias = self->shap.n_inputs;
    const Node *nodes = self->nodes;
    Additions ***patterns = self->shap.patterns;
    Py_ssize_t *pattern_of = self->shap.pattern_of;
    /* Inside the job the tables are cold (~2 MB for the shipped model, among everything else the
     * keyed thread touches between two events): find every tree's pattern first, then ask for
     * all the slots, then for all the recordings, so their cache misses overlap instead of
     * coming one after another; then add in tree order (the order of the sums is LightGBM's). */
    const char *bytes = (const char *)nodes;
    for (Py_ssize_t off = 0; off < self->n_nodes * (Py_ssize_t)sizeof(Node); off += 64)
        __builtin_prefetch(bytes + off);
    for (Py_ssize_t r = 0; r < self->n_roots; r++) {
        const int32_t root = self->roots[r];
        if (root < 0 || patterns[r] == NULL) continue;
        /* the tree's nodes are root .. root + n_internal - 1 (checked by set_shap) */
        Py_ssize_t pattern = 0;
        for (int32_t i = 0; i < self->shap.n_internal[r]; i++) {
            int32_t hot;
            if (hot_child(&nodes[root + i], items, &hot) < 0) goto error;
            if (hot != nodes[root + i].left) pattern |= (Py_ssize_t)1 << i;
        }
        pattern_of[r] = pattern;
        __builtin_prefetch(&patterns[r][pattern]);
    }
    for (Py_ssize_t r = 0; r < self->n_roots; r++) {
        if (self->roots[r] < 0 || patterns[r] == NULL) continue;
        const char *known = (const char *)patterns[r][pattern_of[r]];
        if (known == NULL) continue;
        for (int off = 0; off < 384; off += 64) __builtin_prefetch(known + off);
    }
    memset(phi, 0, (bias + 1) * sizeof(double));
    for (Py_ssize_t r = 0; r < self->n_roots; r++) {
        phi[bias] += self->shap.expected[r];
        const int32_t root = self->roots[r];
        if (root < 0) continue;
        Additions **slots = patterns[r];
        if (slots != NULL) {
            const Additions *known = slots[pattern_of[r]];
            if (known != NULL) {
                for (Py_ssize_t j = 0; j < known->n; j++)
                    phi[known->items[j].input] += known->items[j].delta;
                continue;
            }
        }
        Py_ssize_t n = 0;
        if (tree_shap(self, items, self->shap.scratch, &n, root, 0, self->shap.path, 1, 1, -1) < 0)
            goto error;
        const Addition *scratch = self->shap.scratch;
        for (Py_ssize_t j = 0; j < n; j++) phi[scratch[j].input] += scratch[j].delta;
        if (slots != NULL) {
            Additions *rec = PyMem_Malloc(sizeof(Additions) + n * sizeof(Addition));
            if (rec == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            rec->n = n;
            memcpy(rec->items, self->shap.scratch, n * sizeof(Addition));
            slots[pattern_of[r]] = rec;
        }
    }
    Py_DECREF(seq);
    return 0;
error:
    Py_DECREF(seq);
    return -1;
}

static PyObject *forest_contributions(Forest *self, PyObject *vector) {
    if (forest_shap(self, vector) < 0) return NULL;
    PyObject *out = PyList_New(self->shap.n_inputs + 1);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i <= self->shap.n_inputs; i++) {
        PyObject *v = PyFloat_FromDouble(self->shap.phi[i]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

/* reasons(vector, k) -> [input, contribution, ...]: the k largest contributions by magnitude,
 * largest first, ties in input order (Python's stable sort by -abs(value)); None when a
 * contribution is NaN (the caller sorts then). */
static PyObject *forest_reasons(Forest *self, PyObject *args) {
    PyObject *vector;
    int k;
    if (!PyArg_ParseTuple(args, "Oi", &vector, &k)) return NULL;
    if (k < 0 || k > 16) {
        PyErr_SetString(PyExc_ValueError, "k must be in [0, 16]");
        return NULL;
    }
    if (forest_shap(self, vector) < 0) return NULL;
    const double *phi = self->shap.phi;
    const Py_ssize_t n = self->shap.n_inputs;
    Py_ssize_t top[16];
    int m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double a = fabs(phi[i]);
        if (isnan(a)) Py_RETURN_NONE;
        int p = m; /* after every kept one at least as large: a tie keeps the earlier input first */
        while (p > 0 && a > fabs(phi[top[p - 1]])) p--;
        if (p >= k) continue;
        if (m < k) m++;
        for (int j = m - 1; j > p; j--) top[j] = top[j - 1];
        top[p] = i;
    }
    PyObject *out = PyList_New(2 * m);
    if (out == NULL) return NULL;
    for (int j = 0; j < m; j++) {
        PyObject *index = PyLong_FromSsize_t(top[j]);
        PyObject *value = PyFloat_FromDouble(phi[top[j]]);
        if (index == NULL || value == NULL) {
            Py_XDECREF(index);
            Py_XDECREF(value);
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, 2 * j, index);
        PyList_SET_ITEM(out, 2 * j + 1, value);
    }
    return out;
}

/* The deepest leaf below `node` (edges from it); `limit` guards against a cycle. */
static int subtree_depth(const Forest *f, int32_t node, int limit) {
    if (node < 0) return 0;
    if (limit <= 0) return -1;
    int l = subtree_depth(f, f->nodes[node].left, limit - 1);
    int r = subtree_depth(f, f->nodes[node].right, limit - 1);
    if (l < 0 || r < 0) return -1;
    return 1 + (l > r ? l : r);
}

/* The internal nodes below `node`: how many, and the smallest and largest index. */
static void subtree_nodes(const Forest *f, int32_t node, Py_ssize_t *count, int32_t *lo,
                          int32_t *hi) {
    if (node < 0) return;
    *count += 1;
    if (node < *lo) *lo = node;
    if (node > *hi) *hi = node;
    subtree_nodes(f, f->nodes[node].left, count, lo, hi);
    subtree_nodes(f, f->nodes[node].right, count, lo, hi);
}

/* set_shap(inputs, n_inputs, input_at, node_count, leaf_count, expected): per node its model
 * input (split_feature) and training rows (internal_count), per leaf its rows (leaf_count), per
 * tree its expected value, and where each model input sits in the vector. */
static PyObject *forest_set_shap(Forest *self, PyObject *args) {
    PyObject *inputs, *input_at, *node_count, *leaf_count, *expected;
    Py_ssize_t n_inputs;
    if (!PyArg_ParseTuple(args, "OnOOOO", &inputs, &n_inputs, &input_at, &node_count,
                          &leaf_count, &expected))
        return NULL;
    if (n_inputs <= 0 || n_inputs > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "n_inputs out of range");
        return NULL;
    }
    if (check_list(inputs, "inputs", self->n_nodes) < 0 ||
        check_list(input_at, "input_at", n_inputs) < 0 ||
        check_list(node_count, "node_count", self->n_nodes) < 0 ||
        check_list(leaf_count, "leaf_count", self->n_leaves) < 0 ||
        check_list(expected, "expected", self->n_roots) < 0)
        return NULL;
    Shap shap = {.n_inputs = n_inputs, .n_trees = self->n_roots};
    const size_t trees = self->n_roots ? (size_t)self->n_roots : 1;
    int depth = 0;               /* the deepest leaf of any tree */
    Py_ssize_t scratch_len = 1;  /* the most additions one tree's TreeSHAP makes */
    shap.input_at = PyMem_Calloc(n_inputs, sizeof(int32_t));
    if (shap.input_at == NULL) return PyErr_NoMemory();
    const int32_t *at = shap.input_at;
    if (read_ints(input_at, n_inputs, shap.input_at, sizeof(int32_t)) < 0 ||
        read_ints(inputs, self->n_nodes, &self->nodes[0].input, sizeof(Node)) < 0)
        goto error;
    for (Py_ssize_t i = 0; i < self->n_nodes; i++) {
        int32_t input = self->nodes[i].input;
        if (input < 0 || input >= n_inputs || at[input] != self->nodes[i].feature) {
            PyErr_Format(PyExc_ValueError, "node %zd: input %d does not read vector item %d", i,
                         (int)input, (int)self->nodes[i].feature);
            goto error;
        }
    }
    for (Py_ssize_t r = 0; r < self->n_roots; r++) {
        int d = subtree_depth(self, self->roots[r], (int)(self->n_nodes + 1));
        if (d < 0) {
            PyErr_SetString(PyExc_ValueError, "a tree's nodes form a cycle");
            goto error;
        }
        if (d > depth) depth = d;
    }
    /* Per tree: its internal nodes (for the pattern table when they are few and numbered
     * root .. root + n - 1) and the most additions its TreeSHAP can make (a leaf adds at most
     * one per split above it). */
    shap.n_internal = PyMem_Calloc(trees, sizeof(int32_t));
    shap.patterns = PyMem_Calloc(trees, sizeof(Additions **));
    shap.pattern_of = PyMem_Calloc(trees, sizeof(Py_ssize_t));
    if (shap.n_internal == NULL || shap.patterns == NULL || shap.pattern_of == NULL)
        goto no_memory;
    for (Py_ssize_t r = 0; r < self->n_roots; r++) {
        int32_t root = self->roots[r], lo = INT32_MAX, hi = -1;
        Py_ssize_t count = 0;
        subtree_nodes(self, root, &count, &lo, &hi);
        if ((count + 1) * (depth + 1) > scratch_len) scratch_len = (count + 1) * (depth + 1);
        shap.n_internal[r] = (int32_t)count;
        if (count >= 1 && count <= PATTERN_MAX_NODES && lo == root && hi == root + count - 1) {
            shap.patterns[r] = PyMem_Calloc((size_t)1 << count, sizeof(Additions *));
            if (shap.patterns[r] == NULL) goto no_memory;
        }
    }
    shap.scratch = PyMem_Malloc(scratch_len * sizeof(Addition));
    if (shap.scratch == NULL) goto no_memory;
    if ((shap.node_count = read_doubles(node_count, self->n_nodes)) == NULL ||
        (shap.leaf_count = read_doubles(leaf_count, self->n_leaves)) == NULL ||
        (shap.expected = read_doubles(expected, self->n_roots)) == NULL)
        goto error;
    /* LightGBM's unique_path_data: (max_depth + 1) * (max_depth + 2) / 2 elements. */
    shap.path = PyMem_Calloc((size_t)(depth + 1) * (depth + 2) / 2, sizeof(PathElement));
    shap.phi = PyMem_Calloc(n_inputs + 1, sizeof(double));
    if (shap.path == NULL || shap.phi == NULL) goto no_memory;
    shap_free(&self->shap);
    self->shap = shap;
    Py_RETURN_NONE;
no_memory:
    PyErr_NoMemory();
error:
    shap_free(&shap);
    return NULL;
}

/* input_key(vector) -> bytes: the model's inputs as the doubles LightGBM reads, in input order
 * (what udfs.scoring's memo of explanations is keyed by). */
static PyObject *forest_input_key(Forest *self, PyObject *vector) {
    PyObject *seq = shap_items(self, vector);
    if (seq == NULL) return NULL;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    const Py_ssize_t n = self->shap.n_inputs;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    double *values = (double *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[self->shap.input_at[i]];
        double x = PyFloat_CheckExact(item) ? PyFloat_AS_DOUBLE(item) : PyFloat_AsDouble(item);
        if (x == -1.0 && PyErr_Occurred()) {
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL;
        }
        memcpy(&values[i], &x, sizeof(double));
    }
    Py_DECREF(seq);
    return out;
}

static PyMethodDef forest_methods[] = {
    {"raw", (PyCFunction)forest_raw, METH_O,
     "raw(vector) -> float: the sum of the trees' leaf values for the feature vector"},
    {"score", (PyCFunction)forest_score, METH_O,
     "score(vector) -> float: the calibrated probability (see set_output)"},
    {"set_output", (PyCFunction)forest_set_output, METH_VARARGS,
     "set_output(sigmoid, kind, a, b, x, y): the sigmoid and calibration score() applies"},
    {"set_shap", (PyCFunction)forest_set_shap, METH_VARARGS,
     "set_shap(inputs, n_inputs, input_at, node_count, leaf_count, expected): what "
     "contributions() needs"},
    {"contributions", (PyCFunction)forest_contributions, METH_O,
     "contributions(vector) -> list: LightGBM's SHAP values of the model's inputs, then the bias"},
    {"reasons", (PyCFunction)forest_reasons, METH_VARARGS,
     "reasons(vector, k) -> [input, value, ...] | None: the k largest contributions by magnitude"},
    {"input_key", (PyCFunction)forest_input_key, METH_O,
     "input_key(vector) -> bytes: the model's inputs as doubles, in input order"},
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
