// Threads, instruction-set choice and build information.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "core/dispatch.h"
#include "core/parallel.h"

namespace fastxent::bindings {

namespace py = pybind11;

void register_runtime(py::module_& module) {
    // Choose the instruction set now, so that a bad FASTXENT_ISA fails the import with its reason.
    try {
        kernels();
    } catch (const std::runtime_error& error) {
        throw py::import_error(error.what());
    }

    module.def(
        "set_num_threads",
        [](int n) {
            if (n < 1) throw py::value_error("the number of threads must be at least 1, got " + std::to_string(n));
            set_max_threads(n);
        },
        py::arg("n"));
    module.def("get_num_threads", [] { return max_threads(); });
    module.def("cpu_info", [] {
        py::dict info;
        info["isa"] = kernels().isa;
        info["supported_isas"] = supported_isas();
        info["num_threads"] = max_threads();
        info["openmp"] = openmp_enabled();
        return info;
    });
}

}  // namespace fastxent::bindings
