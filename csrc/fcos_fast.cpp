// The Python module fcos_fast._C. It holds no functions of its own: importing it runs
// the static TORCH_LIBRARY registrations of csrc/ops, which put the fcos_fast::* schemas
// and their CPU/CUDA kernels into the dispatcher (torch.ops.fcos_fast.<name>).
#include <Python.h>

static struct PyModuleDef fcos_fast_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&fcos_fast_c_module);
}
