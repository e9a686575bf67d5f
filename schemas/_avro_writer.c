/*
 * Avro binary encoding of event dicts, driven by a plan compiled from the schema in Python
 * (schemas/avro_plan.py). The hot path of the dataflow encodes every event: cavro spends
 * ~3 us an event on our records, most of it in generic per-field dispatch; this walks a
 * fixed plan with one dict lookup per field and writes into one growing buffer.
 *
 * Plan nodes are tuples (see avro_plan.py, which is the reference for their shapes):
 *   (LONG,) (INT,) (STRING,) (BYTES,) (BOOLEAN,) (DATE,)  -- DATE: int days or a date
 *   (ENUM, {symbol: index})
 *   (ARRAY, item_node)
 *   (RECORD, ((field_name, node), ...))
 *   (NULLABLE, null_branch_index, value_branch_index, node)     -- a [null, T] union
 * The output is byte-identical to fastavro's schemaless_writer (tests/test_avro_writer.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { OP_LONG = 0, OP_INT = 1, OP_STRING = 2, OP_BYTES = 3, OP_BOOLEAN = 4, OP_ENUM = 5,
       OP_ARRAY = 6, OP_RECORD = 7, OP_NULLABLE = 8, OP_DATE = 9 };

#define EPOCH_ORDINAL 719163 /* date(1970, 1, 1).toordinal() */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char small[1024];
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + extra) cap *= 2;
    char *p;
    if (b->data == b->small) {
        p = PyMem_Malloc(cap);
        if (p) memcpy(p, b->small, b->len);
    } else {
        p = PyMem_Realloc(b->data, cap);
    }
    if (!p) { PyErr_NoMemory(); return -1; }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int put_varlong(Buf *b, int64_t v) {
    if (buf_reserve(b, 10) < 0) return -1;
    uint64_t n = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);  /* zigzag */
    while (n & ~(uint64_t)0x7F) {
        b->data[b->len++] = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    b->data[b->len++] = (char)n;
    return 0;
}

static int put_raw(Buf *b, const char *p, Py_ssize_t n) {
    if (put_varlong(b, n) < 0 || buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static int type_error(PyObject *name, const char *want, PyObject *v) {
    if (name)
        PyErr_Format(PyExc_TypeError, "field %R: expected %s, got %.80s", name, want,
                     Py_TYPE(v)->tp_name);
    else
        PyErr_Format(PyExc_TypeError, "expected %s, got %.80s", want, Py_TYPE(v)->tp_name);
    return -1;
}

static int bad_plan(void) {
    PyErr_SetString(PyExc_ValueError, "malformed Avro write plan (see schemas/avro_plan.py)");
    return -1;
}

static int write_node(Buf *b, PyObject *node, PyObject *v, PyObject *name);

static int as_long(PyObject *v, PyObject *name, long long *out) {
    *out = PyLong_AsLongLong(v);
    if (*out == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_OverflowError, "field %R: %R does not fit an Avro long",
                         name ? name : Py_None, v);
        }
        return -1;
    }
    return 0;
}

static int write_record(Buf *b, PyObject *fields, PyObject *v, PyObject *name) {
    if (!PyDict_Check(v)) return type_error(name, "a dict (record)", v);
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyTuple_GET_ITEM(fields, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 2) return bad_plan();
        PyObject *key = PyTuple_GET_ITEM(f, 0);
        PyObject *item = PyDict_GetItemWithError(v, key);  /* borrowed */
        if (!item) {
            if (PyErr_Occurred()) return -1;
            item = Py_None;  /* a missing field is null, as in fastavro */
        }
        Py_INCREF(item);  /* held across the write, whatever the value's code does */
        int rc = write_node(b, PyTuple_GET_ITEM(f, 1), item, key);
        Py_DECREF(item);
        if (rc < 0) return -1;
    }
    return 0;
}

/* Arity of each node kind (op included); a plan that does not fit is refused, never read
 * past its end: plans come from avro_plan.compile_plan, but a bad one must not crash. */
static const Py_ssize_t ARITY[] = {1, 1, 1, 1, 1, 2, 2, 2, 4, 1};

static int write_node(Buf *b, PyObject *node, PyObject *v, PyObject *name) {
    if (!PyTuple_Check(node) || PyTuple_GET_SIZE(node) < 1) return bad_plan();
    long op = PyLong_AsLong(PyTuple_GET_ITEM(node, 0));
    if (op < OP_LONG || op > OP_DATE) {
        PyErr_Clear();  /* an op that is not an int is a malformed plan too */
        return bad_plan();
    }
    if (PyTuple_GET_SIZE(node) != ARITY[op]) return bad_plan();
    switch (op) {
    case OP_LONG: {
        if (!PyLong_Check(v)) return type_error(name, "an int (long)", v);
        long long x;
        if (as_long(v, name, &x) < 0) return -1;
        return put_varlong(b, (int64_t)x);
    }
    case OP_INT: {
        if (!PyLong_Check(v)) return type_error(name, "an int (int)", v);
        long long x;
        if (as_long(v, name, &x) < 0) return -1;
        if (x < INT32_MIN || x > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "field %R: %lld does not fit an Avro int",
                         name ? name : Py_None, x);
            return -1;
        }
        return put_varlong(b, (int64_t)x);
    }
    case OP_STRING: {
        if (!PyUnicode_Check(v)) return type_error(name, "a str", v);
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(v, &n);
        if (!p) return -1;
        return put_raw(b, p, n);
    }
    case OP_BYTES: {
        if (!PyBytes_Check(v)) return type_error(name, "bytes", v);
        return put_raw(b, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    }
    case OP_BOOLEAN: {
        if (!PyBool_Check(v)) return type_error(name, "a bool", v);
        if (buf_reserve(b, 1) < 0) return -1;
        b->data[b->len++] = (char)(v == Py_True);
        return 0;
    }
    case OP_ENUM: {
        if (!PyDict_Check(PyTuple_GET_ITEM(node, 1))) return bad_plan();
        if (!PyUnicode_Check(v)) return type_error(name, "a str (enum symbol)", v);
        PyObject *idx = PyDict_GetItemWithError(PyTuple_GET_ITEM(node, 1), v);
        if (!idx) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "field %R: %R is not a symbol of its enum",
                             name ? name : Py_None, v);
            return -1;
        }
        return put_varlong(b, PyLong_AsLongLong(idx));
    }
    case OP_ARRAY: {
        PyObject *seq = PySequence_Fast(v, "");
        if (!seq) {
            PyErr_Clear();
            return type_error(name, "a list (array)", v);
        }
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        PyObject *item_node = PyTuple_GET_ITEM(node, 1);
        int rc = 0;
        if (n > 0) {
            rc = put_varlong(b, n);
            for (Py_ssize_t i = 0; rc == 0 && i < n; i++)
                rc = write_node(b, item_node, PySequence_Fast_GET_ITEM(seq, i), name);
        }
        Py_DECREF(seq);
        if (rc < 0) return -1;
        return put_varlong(b, 0);  /* end of blocks */
    }
    case OP_RECORD:
        if (!PyTuple_Check(PyTuple_GET_ITEM(node, 1))) return bad_plan();
        return write_record(b, PyTuple_GET_ITEM(node, 1), v, name);
    case OP_DATE: {
        if (PyLong_Check(v)) {
            long long x;
            if (as_long(v, name, &x) < 0) return -1;
            return put_varlong(b, (int64_t)x);
        }
        PyObject *ord = PyObject_CallMethod(v, "toordinal", NULL);
        if (!ord) {
            PyErr_Clear();
            return type_error(name, "a date or int days (date)", v);
        }
        long long x = PyLong_AsLongLong(ord);
        Py_DECREF(ord);
        if (x == -1 && PyErr_Occurred()) return -1;
        return put_varlong(b, (int64_t)(x - EPOCH_ORDINAL));
    }
    case OP_NULLABLE: {
        if (v == Py_None)
            return put_varlong(b, PyLong_AsLongLong(PyTuple_GET_ITEM(node, 1)));
        if (put_varlong(b, PyLong_AsLongLong(PyTuple_GET_ITEM(node, 2))) < 0) return -1;
        return write_node(b, PyTuple_GET_ITEM(node, 3), v, name);
    }
    default:
        return bad_plan();
    }
}

static PyObject *finish(Buf *b, int rc) {
    PyObject *out = rc < 0 ? NULL : PyBytes_FromStringAndSize(b->data, b->len);
    if (b->data != b->small) PyMem_Free(b->data);
    return out;
}

static void buf_init(Buf *b) {
    b->data = b->small;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->small);
}

static int check_plan(PyObject *plan, PyObject *prefix) {
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) < 1) return bad_plan();
    if (!PyBytes_Check(prefix)) {
        PyErr_SetString(PyExc_TypeError, "prefix must be bytes");
        return -1;
    }
    return 0;
}

static int encode_into(Buf *b, PyObject *plan, PyObject *value, PyObject *prefix) {
    b->len = 0;
    Py_ssize_t n = PyBytes_GET_SIZE(prefix);
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data, PyBytes_AS_STRING(prefix), n);
    b->len = n;
    return write_node(b, plan, value, NULL);
}

/* encode(plan, value, prefix) -> prefix + the Avro binary encoding of value */
static PyObject *encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode(plan, value, prefix) takes 3 arguments");
        return NULL;
    }
    if (check_plan(args[0], args[2]) < 0) return NULL;
    Buf b;
    buf_init(&b);
    return finish(&b, encode_into(&b, args[0], args[1], args[2]));
}

/* encode_many(plan, values, prefix) -> [prefix + Avro bytes of each value] */
static PyObject *encode_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode_many(plan, values, prefix) takes 3 arguments");
        return NULL;
    }
    if (check_plan(args[0], args[2]) < 0) return NULL;
    PyObject *seq = PySequence_Fast(args[1], "values must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    Buf b;
    buf_init(&b);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *one = NULL;
        if (encode_into(&b, args[0], PySequence_Fast_GET_ITEM(seq, i), args[2]) == 0)
            one = PyBytes_FromStringAndSize(b.data, b.len);
        if (!one) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, one);
    }
    if (b.data != b.small) PyMem_Free(b.data);
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(plan, value, prefix) -> bytes: prefix + Avro binary of value."},
    {"encode_many", (PyCFunction)(void (*)(void))encode_many, METH_FASTCALL,
     "encode_many(plan, values, prefix) -> list[bytes]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_avro_writer",
    "Avro binary encoding of dicts along a compiled plan (see schemas/avro_plan.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__avro_writer(void) { return PyModule_Create(&module); }
