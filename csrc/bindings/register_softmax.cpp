// log_softmax, softmax, logsumexp.
#include <limits>
#include <vector>

#include "arrays.h"
#include "core/dispatch.h"
#include "result_memory.h"

namespace fastxent::bindings {

namespace {

template <typename T>
void run_softmax(const py::array& input, int half, const ClassAxisView& axis_view, SoftmaxOp op, const py::object& out,
                 void (*kernel)(const SoftmaxProblem<T>&)) {
    const ClassAxisView view = tiled_view<T>(axis_view);
    SoftmaxProblem<T> problem;
    set_logits<T>(problem, input, half);
    problem.view = view;
    problem.op = op;
    const std::int64_t out_size = op == SoftmaxOp::logsumexp ? view.rows() : view.size();
    set_output<T>(out, "out", out_size, op == SoftmaxOp::logsumexp ? -1 : half, problem.output, problem.output_half);
    if (problem.output == nullptr && problem.output_half == nullptr) throw py::value_error("out is required");
    std::vector<double> workspace(static_cast<std::size_t>(split_workspace_size(view)));
    problem.workspace = workspace.data();
    std::vector<T> staging;
    set_staging(problem, staging, false);
    py::gil_scoped_release release;
    kernel(problem);
}

// The common call, f(x, axis) with x a C-contiguous float32/float64 array of at least one dimension
// and the class axis last (-1 or ndim - 1), no out=: the result, or None when the arguments are
// anything else (the Python layer then takes over).
template <typename T>
py::array softmax_fast_typed(const py::array& x, SoftmaxOp op, void (*kernel)(const SoftmaxProblem<T>&)) {
    const py::ssize_t ndim = x.ndim();
    const std::int64_t classes = x.shape(ndim - 1);
    const std::int64_t rows = classes == 0 ? x.size() : x.size() / classes;
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + (op == SoftmaxOp::logsumexp ? ndim - 1 : ndim));
    if (classes == 0) {
        // Rows of no classes: logsumexp is -inf, the others are empty.
        std::int64_t count = 1;
        for (py::ssize_t d = 0; d + 1 < ndim; ++d) count *= x.shape(d);
        py::array_t<T> result(shape);
        for (std::int64_t i = 0; op == SoftmaxOp::logsumexp && i < count; ++i) {
            result.mutable_data()[i] = -std::numeric_limits<T>::infinity();
        }
        return std::move(result);
    }
    py::array result = new_result<T>(shape);
    SoftmaxProblem<T> problem;
    problem.input = static_cast<const T*>(x.data());
    problem.view = tiled_view<T>(ClassAxisView{rows, classes, 1, classes, 1});
    problem.op = op;
    problem.output = static_cast<T*>(result.mutable_data());
    std::vector<double> workspace(static_cast<std::size_t>(split_workspace_size(problem.view)));
    problem.workspace = workspace.data();
    {
        py::gil_scoped_release release;
        kernel(problem);
    }
    return result;
}

py::object softmax_fast(const py::handle& input, int op_code, std::int64_t axis) {
    if (op_code < 0 || op_code > 2 || !py::isinstance<py::array>(input)) return py::none();
    const py::array x = py::reinterpret_borrow<py::array>(input);
    if (x.ndim() < 1 || !(x.flags() & py::array::c_style)) return py::none();
    if (axis != -1 && axis != x.ndim() - 1) return py::none();
    const SoftmaxOp op = static_cast<SoftmaxOp>(op_code);
    const KernelTable& table = kernels();
    if (has_dtype<float>(x)) return softmax_fast_typed<float>(x, op, table.softmax_float);
    if (has_dtype<double>(x)) return softmax_fast_typed<double>(x, op, table.softmax_double);
    return py::none();
}

}  // namespace

void register_softmax(py::module_& module) {
    module.def("softmax_fast", &softmax_fast, py::arg("input"), py::arg("op"), py::arg("axis"));
    // op: 0 log_softmax, 1 softmax, 2 logsumexp. `out` is C-contiguous, of the input's dtype; for
    // 16-bit logits (half = 0 float16, 1 bfloat16, handed over as uint16) uint16 in the same format or
    // float32 (always float32 for logsumexp).
    module.def(
        "softmax",
        [](const py::array& input, const ViewTuple& view_tuple, int op_code, const py::object& out, int half) {
            if (op_code < 0 || op_code > 2) throw py::value_error("unknown softmax op");
            const SoftmaxOp op = static_cast<SoftmaxOp>(op_code);
            const ClassAxisView view = to_view(view_tuple);
            const KernelTable& table = kernels();
            if (half >= 0 || has_dtype<float>(input)) {
                run_softmax<float>(input, half, view, op, out, table.softmax_float);
            } else if (has_dtype<double>(input)) {
                run_softmax<double>(input, half, view, op, out, table.softmax_double);
            } else {
                throw py::type_error("input must be float32 or float64");
            }
        },
        py::arg("input"), py::arg("view"), py::arg("op"), py::arg("out"), py::arg("half") = -1);
}

}  // namespace fastxent::bindings
