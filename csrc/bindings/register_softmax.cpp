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

// The common call, f(x, axis, out) with x a C-contiguous array of float32, float64, float16 or bfloat16
// of at least one dimension, the class axis -1 or any in [0, ndim) (the axes after it are its rows'
// inner axis), and `out` None or (log_softmax and softmax) a usable_out of x's dtype: the result (`out`
// itself when given), or None when the arguments are anything else (the Python layer then takes
// over, and raises any error). 16-bit logits (half >= 0, T float; at least one class) are computed in
// float32: log_softmax and softmax are written in their dtype, logsumexp is rounded to it.
template <typename T>
py::object softmax_fast_typed(const py::array& x, py::ssize_t axis, int half, SoftmaxOp op, const py::object& out,
                              void (*kernel)(const SoftmaxProblem<T>&)) {
    const ClassAxisView view = contiguous_view(x, axis);
    const std::vector<py::ssize_t> shape = op == SoftmaxOp::logsumexp
                                               ? shape_without(x, axis)
                                               : std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim());
    if (!out.is_none() && (op == SoftmaxOp::logsumexp || !usable_out(out, x, x.dtype()))) return py::none();
    if (view.classes == 0) {
        // Rows of no classes: logsumexp is -inf, the others are empty.
        if (!out.is_none()) return out;
        py::array_t<T> result(shape);
        for (std::int64_t i = 0; op == SoftmaxOp::logsumexp && i < view.rows(); ++i) {
            result.mutable_data()[i] = -std::numeric_limits<T>::infinity();
        }
        return std::move(result);
    }
    const bool half_output = half >= 0 && op != SoftmaxOp::logsumexp;
    py::array result = out.is_none() ? new_result(half_output ? x.dtype() : py::dtype::of<T>(), shape)
                                     : py::reinterpret_borrow<py::array>(out);
    SoftmaxProblem<T> problem;
    if (half >= 0) {
        problem.input_half = static_cast<const std::uint16_t*>(x.data());
        problem.half_format = static_cast<HalfFormat>(half);
    } else {
        problem.input = static_cast<const T*>(x.data());
    }
    problem.view = tiled_view<T>(view);
    problem.op = op;
    if (half_output) {
        problem.output_half = static_cast<std::uint16_t*>(result.mutable_data());
    } else {
        problem.output = static_cast<T*>(result.mutable_data());
    }
    std::vector<double> workspace(static_cast<std::size_t>(split_workspace_size(problem.view)));
    problem.workspace = workspace.data();
    std::vector<T> staging;
    set_staging(problem, staging, false);
    {
        py::gil_scoped_release release;
        kernel(problem);
    }
    if (half >= 0 && !half_output) return narrowed_result(result, x.dtype(), half);
    return std::move(result);
}

py::object softmax_fast(const py::handle& input, int op_code, std::int64_t axis, const py::object& out) {
    if (op_code < 0 || op_code > 2 || !py::isinstance<py::array>(input)) return py::none();
    const py::array x = py::reinterpret_borrow<py::array>(input);
    if (x.ndim() < 1 || !(x.flags() & py::array::c_style)) return py::none();
    if (axis < -1 || axis >= x.ndim()) return py::none();
    const py::ssize_t class_axis = axis == -1 ? x.ndim() - 1 : static_cast<py::ssize_t>(axis);
    const SoftmaxOp op = static_cast<SoftmaxOp>(op_code);
    const KernelTable& table = kernels();
    if (has_dtype<float>(x)) return softmax_fast_typed<float>(x, class_axis, -1, op, out, table.softmax_float);
    if (has_dtype<double>(x)) return softmax_fast_typed<double>(x, class_axis, -1, op, out, table.softmax_double);
    const int half = half_format_of(x);
    if (half >= 0 && x.shape(class_axis) > 0) {
        return softmax_fast_typed<float>(x, class_axis, half, op, out, table.softmax_float);
    }
    return py::none();
}

}  // namespace

void register_softmax(py::module_& module) {
    module.def("softmax_fast", &softmax_fast, py::arg("input"), py::arg("op"), py::arg("axis"),
               py::arg("out") = py::none());
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
