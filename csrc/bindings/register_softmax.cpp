// log_softmax, softmax, logsumexp.
#include <vector>

#include "arrays.h"
#include "core/dispatch.h"

namespace fastxent::bindings {

namespace {

template <typename T>
void run_softmax(const py::array& input, const ClassAxisView& view, SoftmaxOp op, const py::object& out,
                 void (*kernel)(const SoftmaxProblem<T>&)) {
    SoftmaxProblem<T> problem;
    problem.input = input_data<T>(input, "input");
    problem.view = view;
    problem.op = op;
    const std::int64_t out_size = op == SoftmaxOp::logsumexp ? view.rows() : view.size();
    problem.output = dense_data<T>(out, "out", out_size, true);
    std::vector<double> workspace(static_cast<std::size_t>(split_workspace_size(view)));
    problem.workspace = workspace.data();
    py::gil_scoped_release release;
    kernel(problem);
}

}  // namespace

void register_softmax(py::module_& module) {
    // op: 0 log_softmax, 1 softmax, 2 logsumexp. `out` is C-contiguous, of the input's dtype.
    module.def(
        "softmax",
        [](const py::array& input, const ViewTuple& view_tuple, int op_code, const py::object& out) {
            if (op_code < 0 || op_code > 2) throw py::value_error("unknown softmax op");
            const SoftmaxOp op = static_cast<SoftmaxOp>(op_code);
            const ClassAxisView view = to_view(view_tuple);
            const KernelTable& table = kernels();
            if (has_dtype<float>(input)) {
                run_softmax<float>(input, view, op, out, table.softmax_float);
            } else if (has_dtype<double>(input)) {
                run_softmax<double>(input, view, op, out, table.softmax_double);
            } else {
                throw py::type_error("input must be float32 or float64");
            }
        },
        py::arg("input"), py::arg("view"), py::arg("op"), py::arg("out"));
}

}  // namespace fastxent::bindings
