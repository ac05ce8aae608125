// Threads, instruction-set choice, build information, and the making of result arrays.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "arrays.h"
#include "core/dispatch.h"
#include "core/parallel.h"
#include "result_memory.h"

namespace fastxent::bindings {

namespace py = pybind11;

void register_runtime(py::module_& module) {
    // Choose the instruction set now, so that a bad FASTXENT_ISA fails the import with its reason.
    try {
        kernels();
    } catch (const std::runtime_error& error) {
        throw py::import_error(error.what());
    }

    // At most thread_limit(): OpenMP ends the process when it cannot create a thread it is asked for
    // (a million ran out of resources here).
    module.def(
        "set_num_threads",
        [](const py::int_& n) {
            // Any Python int: one beyond long long is out of range like any count too large.
            int overflow = 0;
            const long long count = PyLong_AsLongLongAndOverflow(n.ptr(), &overflow);
            if (count == -1 && PyErr_Occurred()) throw py::error_already_set();
            const std::int64_t most = thread_limit();
            if (overflow != 0 || count < 1 || count > most) {
                throw py::value_error("the number of threads must be at least 1 and at most " + std::to_string(most) +
                                      ", got " + py::str(n).cast<std::string>());
            }
            set_max_threads(static_cast<int>(count));
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
    // Views of rows in blocks need more classes than this (ClassAxisView::block_rows).
    module.attr("TILE_CLASSES") = py::int_(kTileClasses);
    // Large results (result_memory.h): an uninitialised C-contiguous array, and the kept block.
    module.attr("KEPT_RESULT_BYTES") = py::int_(kKeptResultBytes);
    module.attr("OWN_RESULT_BYTES") = py::int_(kOwnResultBytes);
    module.def(
        "empty",
        [](const std::vector<py::ssize_t>& shape, const py::dtype& dtype) { return new_result(dtype, shape); },
        py::arg("shape"), py::arg("dtype"));
    module.def("release_memory", &release_kept_memory);
    // values (float32, C-contiguous) rounded to `dtype`, 16-bit floats of format `half` (0 float16,
    // 1 bfloat16): a new array of values' shape.
    module.def(
        "narrow",
        [](const py::array& values, const py::dtype& dtype, int half) {
            if (half < 0 || half > 1 || dtype.itemsize() != 2) throw std::invalid_argument("not a 16-bit format");
            dense_data<float>(values, "values", static_cast<std::int64_t>(values.size()), false);
            return narrowed_result(values, dtype, half);
        },
        py::arg("values"), py::arg("dtype"), py::arg("half"));
}

}  // namespace fastxent::bindings
