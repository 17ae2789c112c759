/* The compiled half of capture/decode.py: ring-buffer records -> event objects.
 *
 * Python decides everything here: decode.py builds one plan per record type
 * from the ctypes layouts (layouts.py) and the event dataclasses
 * (model/events.py), and this module only executes it. A plan is
 *   (event class, shortest valid record, ((kind, offset, arg), ...))
 * with one step per dataclass field, in field order. Each step reads one
 * value out of the record and stores it straight into that field's slot of a
 * freshly allocated event: no argument tuple, no __init__, no per-field
 * object.__setattr__ of a frozen dataclass. The objects are the same as the
 * ones the pure-Python decoder builds (tests/unit/test_decode_compiled.py).
 *
 * Records of a type without a plan, of an unknown type, or too short for
 * their type go to the Python callable `slow` (it decodes them, or counts them
 * bad and returns None). x86_64 only, like the probes: fields are read in the
 * host's (little-endian) byte order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* Step kinds: keep in step with decode.py (_K_*). */
enum { K_U32, K_I32, K_U64, K_I64, K_BOOL, K_MASK, K_CSTR, K_OPT_CSTR };

#define MAX_TYPES 64
#define MAX_STEPS 24

typedef struct {
    int kind;
    Py_ssize_t off;      /* where the value (or a string's length) is */
    Py_ssize_t arg;      /* K_MASK: the bit mask; K_CSTR: where the string's bytes are */
    Py_ssize_t slot;     /* byte offset of the field's slot in the event object */
} Step;

typedef struct {
    PyTypeObject *cls;   /* NULL: no plan for this type */
    Py_ssize_t min_len;
    int nsteps;
    Step steps[MAX_STEPS];
} Plan;

typedef struct {
    Plan plans[MAX_TYPES];
} Plans;

static const char CAPSULE[] = "provtrace._decode.plans";

static void plans_free(PyObject *capsule) {
    Plans *p = PyCapsule_GetPointer(capsule, CAPSULE);
    if (!p)
        return;
    for (int t = 0; t < MAX_TYPES; t++)
        Py_XDECREF(p->plans[t].cls);
    PyMem_Free(p);
}

/* The byte offset of slot `name` of cls: a __slots__ member holding an object. */
static Py_ssize_t slot_offset(PyTypeObject *cls, PyObject *name) {
    PyObject *d = PyObject_GetAttr((PyObject *)cls, name);
    if (!d)
        return -1;
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
            off = m->offset;
    }
    Py_DECREF(d);
    if (off < 0)
        PyErr_Format(PyExc_TypeError, "%s.%U is not a __slots__ field", cls->tp_name, name);
    return off;
}

/* compile({type: (cls, min_len, ((kind, off, arg, field name), ...))}) -> plans */
static PyObject *compile_plans(PyObject *self, PyObject *spec) {
    if (!PyDict_Check(spec))
        return PyErr_Format(PyExc_TypeError, "plans must be a dict");
    Plans *p = PyMem_Calloc(1, sizeof(Plans));
    if (!p)
        return PyErr_NoMemory();
    PyObject *capsule = PyCapsule_New(p, CAPSULE, plans_free);
    if (!capsule) {
        PyMem_Free(p);
        return NULL;
    }
    PyObject *key, *val;
    Py_ssize_t pos = 0;
    while (PyDict_Next(spec, &pos, &key, &val)) {
        long t = PyLong_AsLong(key);
        PyObject *cls, *steps;
        Py_ssize_t min_len;
        if (t == -1 && PyErr_Occurred())
            goto fail;
        if (t < 0 || t >= MAX_TYPES) {
            PyErr_Format(PyExc_ValueError, "record type %ld out of range", t);
            goto fail;
        }
        if (!PyArg_ParseTuple(val, "O!nO!", &PyType_Type, &cls, &min_len, &PyTuple_Type, &steps))
            goto fail;
        Plan *plan = &p->plans[t];
        if (PyTuple_GET_SIZE(steps) > MAX_STEPS) {
            PyErr_Format(PyExc_ValueError, "too many fields for record type %ld", t);
            goto fail;
        }
        plan->min_len = min_len;
        plan->nsteps = (int)PyTuple_GET_SIZE(steps);
        for (int i = 0; i < plan->nsteps; i++) {
            Step *s = &plan->steps[i];
            PyObject *name;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(steps, i), "innU", &s->kind, &s->off, &s->arg, &name))
                goto fail;
            Py_ssize_t width = (s->kind == K_U64 || s->kind == K_I64) ? 8 : 4;
            if (s->kind < K_U32 || s->kind > K_OPT_CSTR || s->off < 0 || s->off + width > min_len) {
                PyErr_Format(PyExc_ValueError, "bad step %d of record type %ld", i, t);
                goto fail;
            }
            s->slot = slot_offset((PyTypeObject *)cls, name);
            if (s->slot < 0)
                goto fail;
        }
        Py_INCREF(cls);
        plan->cls = (PyTypeObject *)cls;
    }
    return capsule;
fail:
    Py_DECREF(capsule);
    return NULL;
}

static inline uint32_t u32_at(const char *b, Py_ssize_t off) {
    uint32_t v;
    memcpy(&v, b + off, sizeof v);
    return v;
}

static inline uint64_t u64_at(const char *b, Py_ssize_t off) {
    uint64_t v;
    memcpy(&v, b + off, sizeof v);
    return v;
}

/* As decode._cstr: `length` bytes (NUL included) at start, cut at the first
 * NUL, clipped to the record, decoded as os.fsdecode does. */
static PyObject *cstr(const char *b, Py_ssize_t n, Py_ssize_t start, uint32_t length) {
    if (length <= 1 || start >= n)
        return PyUnicode_DecodeFSDefaultAndSize("", 0);
    Py_ssize_t size = (Py_ssize_t)length - 1;
    if (size > n - start)
        size = n - start;
    const char *nul = memchr(b + start, '\0', (size_t)size);
    if (nul)
        size = nul - (b + start);
    return PyUnicode_DecodeFSDefaultAndSize(b + start, size);
}

static PyObject *value(const Step *s, const char *b, Py_ssize_t n) {
    switch (s->kind) {
    case K_U32: return PyLong_FromUnsignedLong(u32_at(b, s->off));
    case K_I32: return PyLong_FromLong((int32_t)u32_at(b, s->off));
    case K_U64: return PyLong_FromUnsignedLongLong(u64_at(b, s->off));
    case K_I64: return PyLong_FromLongLong((int64_t)u64_at(b, s->off));
    case K_BOOL: return PyBool_FromLong(u32_at(b, s->off) != 0);
    case K_MASK: return PyBool_FromLong((u32_at(b, s->off) & (uint32_t)s->arg) != 0);
    case K_CSTR: return cstr(b, n, s->arg, u32_at(b, s->off));
    case K_OPT_CSTR: {
        uint32_t len = u32_at(b, s->off);
        if (!len)
            Py_RETURN_NONE;
        return cstr(b, n, s->arg, len);
    }
    }
    PyErr_SetString(PyExc_SystemError, "bad step kind");
    return NULL;
}

static PyObject *build(const Plan *plan, const char *b, Py_ssize_t n) {
    PyObject *ev = plan->cls->tp_alloc(plan->cls, 0);
    if (!ev)
        return NULL;
    for (int i = 0; i < plan->nsteps; i++) {
        const Step *s = &plan->steps[i];
        PyObject *v = value(s, b, n);
        if (!v) {
            Py_DECREF(ev);
            return NULL;
        }
        *(PyObject **)((char *)ev + s->slot) = v;  /* the slot is still empty: nothing to release */
    }
    return ev;
}

/* decode_all(plans, records, slow) -> [event, ...] */
static PyObject *decode_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "decode_all(plans, records, slow)");
    Plans *p = PyCapsule_GetPointer(args[0], CAPSULE);
    if (!p)
        return NULL;
    PyObject *slow = args[2];
    PyObject *seq = PySequence_Fast(args[1], "records must be iterable");
    if (!seq)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyList_New(0);
    if (!out)
        goto fail;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *rec = items[i], *ev;
        const Plan *plan = NULL;
        if (PyBytes_CheckExact(rec) && PyBytes_GET_SIZE(rec) >= 4) {
            const char *b = PyBytes_AS_STRING(rec);
            uint32_t t = u32_at(b, 0);
            if (t < MAX_TYPES && p->plans[t].cls && PyBytes_GET_SIZE(rec) >= p->plans[t].min_len)
                plan = &p->plans[t];
        }
        if (plan)
            ev = build(plan, PyBytes_AS_STRING(rec), PyBytes_GET_SIZE(rec));
        else
            ev = PyObject_CallOneArg(slow, rec);
        if (!ev)
            goto fail;
        if (ev != Py_None && PyList_Append(out, ev) < 0) {
            Py_DECREF(ev);
            goto fail;
        }
        Py_DECREF(ev);
    }
    Py_DECREF(seq);
    return out;
fail:
    Py_XDECREF(out);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"compile", compile_plans, METH_O, "compile({type: (cls, min_len, steps)}) -> plans"},
    {"decode_all", (PyCFunction)(void (*)(void))decode_all, METH_FASTCALL,
     "decode_all(plans, records, slow) -> list of events"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_decode",
    "Compiled ring-buffer decoding for provtrace (see capture/decode.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__decode(void) {
    return PyModule_Create(&module);
}
