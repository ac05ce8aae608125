// The private extension module fastxent._core. Each binding area registers itself; the public API is
// the pure-Python package around it.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastxent::bindings {
void register_runtime(py::module_& module);
void register_softmax(py::module_& module);
void register_loss(py::module_& module);
void register_score(py::module_& module);
void register_dlpack(py::module_& module);
}  // namespace fastxent::bindings

PYBIND11_MODULE(_core, module) {
    module.doc() = "fastxent's compiled kernels (private: use the fastxent package)";
    fastxent::bindings::register_runtime(module);
    fastxent::bindings::register_softmax(module);
    fastxent::bindings::register_loss(module);
    fastxent::bindings::register_score(module);
    fastxent::bindings::register_dlpack(module);
}
