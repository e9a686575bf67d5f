/* tickflow._ids: row identities as one Arrow string column, without a Python string a row.
 *
 * join_ids(names, index, *cols) -> (offsets, data)
 *   names: a tuple of bytes; index: int64 buffer (each row's name, an index into names);
 *   cols: int64 buffers of the same length. Row i is
 *       names[index[i]] "|" cols[0][i] "|" cols[1][i] ...
 *   in decimal; offsets are the n + 1 int32 offsets of an Arrow string array, data its
 *   bytes. It is what tickflow.normalize.databento builds with Arrow compute (cast each
 *   column to text, then binary_join_element_wise), which stays the fallback and the
 *   reference (tests/test_databento.py holds the two equal).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_COLS 8
#define INT_CHARS 20 /* "-9223372036854775808" */

static char *put_int(char *p, int64_t v) {
    char tmp[INT_CHARS];
    int k = 0;
    uint64_t u;
    if (v < 0) {
        *p++ = '-';
        u = (uint64_t)0 - (uint64_t)v;
    } else {
        u = (uint64_t)v;
    }
    do {
        tmp[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (k) *p++ = tmp[--k];
    return p;
}

static PyObject *join_ids(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs < 2 || nargs - 2 > MAX_COLS) {
        PyErr_SetString(PyExc_TypeError, "join_ids(names, index, *cols): up to 8 columns");
        return NULL;
    }
    PyObject *names = PyTuple_GET_ITEM(args, 0);
    if (!PyTuple_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "names must be a tuple of bytes");
        return NULL;
    }
    Py_ssize_t n_names = PyTuple_GET_SIZE(names), max_name = 0;
    for (Py_ssize_t j = 0; j < n_names; j++) {
        PyObject *b = PyTuple_GET_ITEM(names, j);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "names must be a tuple of bytes");
            return NULL;
        }
        if (PyBytes_GET_SIZE(b) > max_name) max_name = PyBytes_GET_SIZE(b);
    }
    int ncols = (int)(nargs - 2);
    Py_buffer bufs[MAX_COLS + 1];
    int got = 0;
    PyObject *offsets = NULL, *data = NULL;
    Py_ssize_t n = -1;
    for (int c = 0; c <= ncols; c++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, c + 1), &bufs[c],
                               PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        got++;
        if (bufs[c].itemsize != 8 || bufs[c].format == NULL ||
            (strcmp(bufs[c].format, "l") != 0 && strcmp(bufs[c].format, "q") != 0 &&
             strcmp(bufs[c].format, "<q") != 0 && strcmp(bufs[c].format, "<l") != 0 &&
             strcmp(bufs[c].format, "=q") != 0)) {
            PyErr_SetString(PyExc_TypeError, "index and columns must be int64 buffers");
            goto done;
        }
        Py_ssize_t len = bufs[c].len / 8;
        if (n >= 0 && len != n) {
            PyErr_SetString(PyExc_ValueError, "index and columns differ in length");
            goto done;
        }
        n = len;
    }
    /* An upper bound of the data, then shrunk: one pass, no second formatting. */
    Py_ssize_t bound = n * (max_name + (Py_ssize_t)ncols * (INT_CHARS + 1));
    if (bound > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "ids over 2 GiB: pass fewer rows at a time");
        goto done;
    }
    offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(int32_t));
    data = PyBytes_FromStringAndSize(NULL, bound);
    if (offsets == NULL || data == NULL) goto done;
    {
        const int64_t *index = (const int64_t *)bufs[0].buf;
        int32_t *off = (int32_t *)PyBytes_AS_STRING(offsets);
        char *start = PyBytes_AS_STRING(data), *p = start;
        off[0] = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t k = index[i];
            if (k < 0 || k >= n_names) {
                PyErr_Format(PyExc_IndexError, "row %zd names index %lld of %zd names", i,
                             (long long)k, n_names);
                goto done;
            }
            PyObject *b = PyTuple_GET_ITEM(names, k);
            Py_ssize_t len = PyBytes_GET_SIZE(b);
            memcpy(p, PyBytes_AS_STRING(b), (size_t)len);
            p += len;
            for (int c = 1; c <= ncols; c++) {
                *p++ = '|';
                p = put_int(p, ((const int64_t *)bufs[c].buf)[i]);
            }
            off[i + 1] = (int32_t)(p - start);
        }
        if (_PyBytes_Resize(&data, p - start) < 0) {
            data = NULL;
            goto done;
        }
    }
    for (int c = 0; c < got; c++) PyBuffer_Release(&bufs[c]);
    return Py_BuildValue("(NN)", offsets, data);
done:
    for (int c = 0; c < got; c++) PyBuffer_Release(&bufs[c]);
    Py_XDECREF(offsets);
    Py_XDECREF(data);
    return NULL;
}

static PyMethodDef methods[] = {
    {"join_ids", join_ids, METH_VARARGS,
     "join_ids(names, index, *cols) -> (int32 offsets, data): rows of "
     "names[index[i]]|cols[0][i]|... as an Arrow string column's buffers."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "tickflow._ids", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ids(void) { return PyModule_Create(&module); }
