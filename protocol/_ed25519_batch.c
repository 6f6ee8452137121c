/* Ed25519 verification of a list of signatures with the GIL released once.
 *
 * protocol/ed25519_batch.py is the only caller: it passes the address of libsodium's
 * crypto_sign_verify_detached as found in PyNaCl's own loaded library, so this module
 * links against nothing but Python and verifies with the very code PyNaCl uses.
 * The items are checked and their buffers taken while the GIL is held; bytes objects
 * are immutable and a tuple of the items (PySequence_Tuple: a list is copied, not
 * shared, so another thread emptying it frees nothing) holds a reference to each, so the
 * buffers stay valid while the loop runs without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef int (*verify_detached_fn)(const unsigned char *sig, const unsigned char *m,
                                  unsigned long long mlen, const unsigned char *pk);

typedef struct {
    const unsigned char *public_key;
    const unsigned char *signature;
    const unsigned char *message;
    unsigned long long length;
} Entry;

static int take_entry(PyObject *item, Entry *entry) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
        PyErr_SetString(PyExc_TypeError, "each item is (public key, signature, message)");
        return -1;
    }
    PyObject *public_key = PyTuple_GET_ITEM(item, 0);
    PyObject *signature = PyTuple_GET_ITEM(item, 1);
    PyObject *message = PyTuple_GET_ITEM(item, 2);
    if (!PyBytes_Check(public_key) || !PyBytes_Check(signature) || !PyBytes_Check(message)) {
        PyErr_SetString(PyExc_TypeError, "public key, signature and message must be bytes");
        return -1;
    }
    if (PyBytes_GET_SIZE(public_key) != 32 || PyBytes_GET_SIZE(signature) != 64) {
        PyErr_SetString(PyExc_ValueError, "a public key is 32 bytes and a signature 64");
        return -1;
    }
    entry->public_key = (const unsigned char *)PyBytes_AS_STRING(public_key);
    entry->signature = (const unsigned char *)PyBytes_AS_STRING(signature);
    entry->message = (const unsigned char *)PyBytes_AS_STRING(message);
    entry->length = (unsigned long long)PyBytes_GET_SIZE(message);
    return 0;
}

static PyObject *verify_many(PyObject *Py_UNUSED(module), PyObject *args) {
    unsigned long long address;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "KO:verify_many", &address, &items)) {
        return NULL;
    }
    if (address == 0) {
        PyErr_SetString(PyExc_ValueError, "no verify function");
        return NULL;
    }
    PyObject *seq = PySequence_Tuple(items);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(seq);
    Entry *entries = PyMem_Malloc(sizeof(Entry) * (size_t)(count > 0 ? count : 1));
    PyObject *verdicts = PyBytes_FromStringAndSize(NULL, count);
    if (entries == NULL || verdicts == NULL) {
        if (entries == NULL) {
            PyErr_NoMemory();
        }
        goto fail;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (take_entry(PyTuple_GET_ITEM(seq, i), &entries[i]) < 0) {
            goto fail;
        }
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(verdicts);
    verify_detached_fn verify = (verify_detached_fn)(uintptr_t)address;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        const Entry *e = &entries[i];
        out[i] = verify(e->signature, e->message, e->length, e->public_key) == 0;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(entries);
    Py_DECREF(seq);
    return verdicts;
fail:
    PyMem_Free(entries);
    Py_XDECREF(verdicts);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"verify_many", verify_many, METH_VARARGS,
     "verify_many(address, items) -> bytes: 1 for each (public key, signature, message) "
     "whose signature verifies, else 0."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_ed25519_batch",
    .m_doc = "Ed25519 verification of many signatures.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__ed25519_batch(void) { return PyModule_Create(&module); }
