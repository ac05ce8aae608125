// cross_entropy (forward, gradient, both, and the backward of the loss class) and nll_loss.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "arrays.h"
#include "core/dispatch.h"
#include "core/nll.h"
#include "core/targets.h"
#include "result_memory.h"

namespace fastxent::bindings {

namespace {

enum class Reduction { none = 0, mean = 1, sum = 2 };

// IndexError on the first invalid target, if the check found one.
void raise_invalid_target(const TargetCheck& check, const std::int64_t* data, std::int64_t classes,
                          std::int64_t ignore_index) {
    const std::int64_t bad = check.first_invalid;
    if (bad >= 0) {
        throw py::index_error("target " + std::to_string(data[bad]) + " is out of bounds for " +
                              std::to_string(classes) + " classes (valid: 0 <= target < " +
                              std::to_string(classes) + ", or ignore_index=" + std::to_string(ignore_index) +
                              "); first found at flat position " + std::to_string(bad));
    }
}

// The targets' data, checked (IndexError on the first invalid one); `kept`, when not null, receives
// how many are not ignore_index.
const std::int64_t* checked_targets(const py::object& target, std::int64_t rows, std::int64_t classes,
                                    std::int64_t ignore_index, std::int64_t* kept = nullptr) {
    const std::int64_t* data = dense_data<std::int64_t>(target, "target", rows, false);
    TargetCheck check;
    {
        py::gil_scoped_release release;
        check = check_targets(data, rows, classes, ignore_index);
    }
    raise_invalid_target(check, data, classes, ignore_index);
    if (kept != nullptr) *kept = check.kept;
    return data;
}

// The check of the targets as the kernel made it, one TargetCheck per work item in order.
TargetCheck combined_check(const std::vector<TargetCheck>& item_checks) {
    TargetCheck check{-1, 0};
    for (const TargetCheck& item : item_checks) {
        if (check.first_invalid < 0) check.first_invalid = item.first_invalid;
        check.kept += item.kept;
    }
    return check;
}

// D = sum of the kept targets' class weights, or their count without weights.
template <typename T>
double denominator_of(const std::int64_t* targets, std::int64_t rows, const T* weight, std::int64_t ignore_index,
                      std::int64_t kept) {
    return weight == nullptr ? static_cast<double>(kept) : target_weight_sum(targets, rows, weight, ignore_index);
}

// Returns (sum of the row losses, denominator of "mean"). The denominator is D for index targets and
// the number of rows for probability targets.
template <typename T>
py::tuple run_cross_entropy(const py::array& input, int half, double softcap, const ClassAxisView& axis_view,
                            const py::object& target_index, const py::object& target_prob, const py::object& weight,
                            std::int64_t ignore_index, double label_smoothing, double z_loss, Reduction reduction,
                            double grad_output, const py::object& grad_rows, const py::object& row_loss,
                            const py::object& grad, const py::object& save_stats, const py::object& saved_stats,
                            bool want_sum, void (*kernel)(const CrossEntropyProblem<T>&)) {
    const ClassAxisView view = tiled_view<T>(axis_view);
    const std::int64_t rows = view.rows();
    CrossEntropyProblem<T> problem;
    set_logits<T>(problem, input, half);
    if (!(softcap >= 0.0 && softcap < std::numeric_limits<double>::infinity())) {
        throw py::value_error("softcap must be a finite number > 0");
    }
    problem.softcap = softcap;
    problem.view = view;
    problem.weight = dense_data<T>(weight, "weight", view.classes, false);
    problem.ignore_index = ignore_index;
    problem.label_smoothing = label_smoothing;
    problem.z_loss = z_loss;
    std::int64_t kept = 0;
    if (!target_index.is_none()) {
        problem.target_index = dense_data<std::int64_t>(target_index, "target", rows, false);
    } else {
        problem.target_prob = dense_data<T>(target_prob, "target", view.size(), false);
        if (problem.target_prob == nullptr) throw py::value_error("a target is required");
    }
    problem.row_loss = dense_data<T>(row_loss, "row_loss", rows, true);
    set_output<T>(grad, "out", view.size(), half, problem.grad, problem.grad_half);
    problem.grad_rows = dense_data<T>(grad_rows, "grad_output", rows, false);
    problem.save_stats = reinterpret_cast<RowStats*>(dense_data<double>(save_stats, "save_stats", 2 * rows, true));
    problem.saved_stats =
        reinterpret_cast<const RowStats*>(dense_data<double>(saved_stats, "saved_stats", 2 * rows, false));

    const WorkPlan plan = plan_work(view);
    // The targets are checked here, or by the kernel where it can (targets_checked_by_kernel): a
    // separate pass over them took 6% of a 1048576 x 10 loss's time.
    std::vector<TargetCheck> item_checks;
    if (targets_checked_by_kernel(problem)) {
        item_checks.resize(static_cast<std::size_t>(plan.items));
        problem.target_checks = item_checks.data();
    } else if (problem.target_index != nullptr) {
        checked_targets(target_index, rows, view.classes, ignore_index, &kept);
    }
    std::vector<double> partials(want_sum ? static_cast<std::size_t>(plan.items) : 0);
    if (want_sum) problem.partial_sums = partials.data();
    std::vector<double> workspace(static_cast<std::size_t>(split_workspace_size(view)));
    problem.workspace = workspace.data();
    std::vector<T> staging;
    set_staging(problem, staging, softcap != 0.0);

    double total = 0.0;
    double denominator = 0.0;
    TargetCheck check{-1, 0};
    {
        py::gil_scoped_release release;
        if (problem.target_checks != nullptr) {
            // No gradient: the scale is not used, and the denominator comes from the kernel's check.
            kernel(problem);
            check = combined_check(item_checks);
            kept = check.kept;
        }
        // Probability targets: the number of rows, or 0 for rows of no classes (PyTorch divides by
        // numel / C, NaN then).
        denominator = problem.target_index != nullptr
                          ? denominator_of(problem.target_index, rows, problem.weight, ignore_index, kept)
                          : static_cast<double>(view.classes == 0 ? 0 : rows);
        if (reduction == Reduction::mean) {
            problem.grad_scale = denominator == 0.0 ? 0.0 : grad_output / denominator;
        } else {
            problem.grad_scale = grad_output;
        }
        if (problem.target_checks == nullptr) kernel(problem);
        if (reduction == Reduction::mean && denominator == 0.0) {
            // D = 0 (every row ignored, or zero weights): the gradient is zero (SPEC), even in rows
            // whose logits are NaN or infinite, where a zero scale would still give NaN.
            if (problem.grad != nullptr) std::fill(problem.grad, problem.grad + view.size(), T(0));
            if (problem.grad_half != nullptr) std::fill(problem.grad_half, problem.grad_half + view.size(), 0);
        }
        for (std::int64_t i = 0; i < plan.items && want_sum; ++i) total += problem.partial_sums[i];
        // A zero sum of probability-target losses is -0, as PyTorch's negated sum (see
        // negated_log_prob_sum, loss.cpp); a sum of -0 rows starting at +0 would be +0.
        if (problem.target_prob != nullptr && total == 0.0) total = -0.0;
    }
    raise_invalid_target(check, problem.target_index, view.classes, ignore_index);
    return py::make_tuple(total, denominator);
}

template <typename T>
py::tuple run_nll(const py::array& input, int half, const ClassAxisView& view, const py::object& target,
                  const py::object& weight, std::int64_t ignore_index, const py::object& row_loss) {
    const std::int64_t rows = view.rows();
    CrossEntropyProblem<T> logits;  // only its logits: T, or 16-bit floats
    set_logits<T>(logits, input, half);
    const T* weight_data = dense_data<T>(weight, "weight", view.classes, false);
    std::int64_t kept = 0;
    const std::int64_t* targets = checked_targets(target, rows, view.classes, ignore_index, &kept);
    T* row_loss_data = dense_data<T>(row_loss, "row_loss", rows, true);
    double denominator = 0.0;
    double total = 0.0;
    {
        py::gil_scoped_release release;
        denominator = denominator_of(targets, rows, weight_data, ignore_index, kept);
        total = nll_loss(logits.input, logits.input_half, logits.half_format, view, targets, weight_data,
                         ignore_index, row_loss_data);
    }
    return py::make_tuple(total, denominator);
}

}  // namespace

// The common calls, on x a C-contiguous (N, C) or (N, C, d1, ...) array of float32, float64, float16 or
// bfloat16 (classes along axis 1, PyTorch's default) and t an integer array of class indices of x's
// shape without axis 1, with every other option at its default but class weights, without the
// Python layer's normalisation. Each returns None when the arguments are anything else (the Python
// layer then takes over, and raises any error).
bool fast_logits(const py::handle& input, int reduction) {
    if (!py::isinstance<py::array>(input) || reduction < 0 || reduction > 2) return false;
    const py::array x = py::reinterpret_borrow<py::array>(input);
    return x.ndim() >= 2 && (x.flags() & py::array::c_style);
}

// The class indices of a common call as a C-contiguous int64 array: `target` itself, or a copy of
// any other array of x's row shape (x's without axis 1) of signed integers or unsigned ones of up to
// 32 bits, converted as the Python layer would (uint64 is left to it, for its check of values beyond
// int64). None otherwise.
py::object fast_targets(const py::handle& target, const py::array& x) {
    if (!py::isinstance<py::array>(target)) return py::none();
    const py::array t = py::reinterpret_borrow<py::array>(target);
    if (t.ndim() != x.ndim() - 1 || t.shape(0) != x.shape(0)) return py::none();
    for (py::ssize_t d = 1; d < t.ndim(); ++d) {
        if (t.shape(d) != x.shape(d + 1)) return py::none();
    }
    if (has_dtype<std::int64_t>(t) && (t.flags() & py::array::c_style)) return t;
    const py::dtype dtype = t.dtype();
    if (!(dtype.kind() == 'i' || (dtype.kind() == 'u' && dtype.itemsize() <= 4))) return py::none();
    py::object converted = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(t);
    return converted ? converted : py::none();  // a failed conversion: the Python layer raises the error
}

// The arrays of a common call: x, its targets as int64 (t), how x's elements are computed (T =
// float for 16-bit floats of format `half`), and its class weights (None, or a C-contiguous 1-D
// array of C values of the computed dtype, as the Python layer would make them; any other weight
// takes the Python layer). Nothing when the arguments need the Python layer. (Made whole at the end:
// a default-constructed py::array is a new NumPy array, a third of a microsecond.)
struct FastCall {
    py::array x;
    py::array t;
    bool float64;
    int half;
    py::object weight;
};

std::optional<FastCall> fast_call(const py::handle& input, const py::handle& target, int reduction,
                                  const py::handle& weight) {
    if (!fast_logits(input, reduction)) return std::nullopt;
    const py::array x = py::reinterpret_borrow<py::array>(input);
    const py::object indices = fast_targets(target, x);
    if (indices.is_none()) return std::nullopt;
    const bool float32 = has_dtype<float>(x);
    const bool float64 = !float32 && has_dtype<double>(x);
    const int half = float32 || float64 ? -1 : half_format_of(x);
    if (!float32 && !float64 && half < 0) return std::nullopt;
    if (!weight.is_none()) {
        if (!py::isinstance<py::array>(weight)) return std::nullopt;
        const py::array w = py::reinterpret_borrow<py::array>(weight);
        const bool dtype_fits = float64 ? has_dtype<double>(w) : has_dtype<float>(w);
        if (!dtype_fits || w.ndim() != 1 || w.shape(0) != x.shape(1) || !(w.flags() & py::array::c_style)) {
            return std::nullopt;
        }
    }
    return FastCall{x, py::reinterpret_borrow<py::array>(indices), float64, half,
                    py::reinterpret_borrow<py::object>(weight)};
}

// The mean or the sum of a run_cross_entropy result (total, denominator), as a float. A mean over a
// zero denominator (an empty or fully ignored batch) is NaN, as PyTorch's 0 / 0 (see
// _arguments.reduce).
inline py::float_ reduced_loss(const py::tuple& result, Reduction reduction) {
    const double total = result[0].cast<double>();
    if (reduction != Reduction::mean) return py::float_(total);
    const double denominator = result[1].cast<double>();
    return py::float_(denominator != 0.0 ? total / denominator : std::numeric_limits<double>::quiet_NaN());
}

// cross_entropy(x, t, reduction=...): the mean or the sum as a float, or the per-row losses as a new
// array of x's dtype ("none"). 16-bit logits (half >= 0, T float) are computed in float32 and their
// row losses rounded to x's dtype. Kept apart from cross_entropy_fast_with: going through it, with
// its options, made a 32 x 10 call 2-5% slower.
template <typename T>
py::object cross_entropy_fast_typed(const py::array& x, int half, const py::array& t, const py::object& weight,
                                    std::int64_t ignore_index, Reduction reduction,
                                    void (*kernel)(const CrossEntropyProblem<T>&)) {
    const ClassAxisView view = contiguous_view(x, 1);
    const py::object none = py::none();
    if (reduction == Reduction::none) {
        py::array_t<T> row_loss(shape_without(x, 1));
        run_cross_entropy<T>(x, half, 0.0, view, t, none, weight, ignore_index, 0.0, 0.0, reduction, 1.0, none,
                             row_loss, none, none, none, false, kernel);
        if (half >= 0) return narrowed_result(row_loss, x.dtype(), half);
        return std::move(row_loss);
    }
    const py::tuple result = run_cross_entropy<T>(x, half, 0.0, view, t, none, weight, ignore_index, 0.0, 0.0,
                                                  reduction, 1.0, none, none, none, none, none, true, kernel);
    return reduced_loss(result, reduction);
}

py::object cross_entropy_fast(const py::handle& input, const py::handle& target, std::int64_t ignore_index,
                              int reduction, const py::handle& weight) {
    const std::optional<FastCall> call = fast_call(input, target, reduction, weight);
    if (!call) return py::none();
    const Reduction r = static_cast<Reduction>(reduction);
    const KernelTable& table = kernels();
    if (call->float64) {
        return cross_entropy_fast_typed<double>(call->x, -1, call->t, call->weight, ignore_index, r,
                                                table.cross_entropy_double);
    }
    return cross_entropy_fast_typed<float>(call->x, call->half, call->t, call->weight, ignore_index, r,
                                           table.cross_entropy_float);
}

// Whether `out` may take the gradient of x in the fast path: usable_out for x's dtype (or float32, for
// 16-bit x) that also shares no memory with t (the caller's targets, before any conversion) or with
// the class weights (None, or an array). Any other out= is left to the Python layer, which refuses it.
template <typename T>
bool fast_out(const py::handle& out, const py::array& x, int half, const py::array& t, const py::object& weight) {
    const bool fits = usable_out(out, x, py::dtype::of<T>()) || (half >= 0 && usable_out(out, x, x.dtype()));
    if (!fits) return false;
    const py::array o = py::reinterpret_borrow<py::array>(out);
    return !bounds_overlap(o, t) && (weight.is_none() || !bounds_overlap(o, py::reinterpret_borrow<py::array>(weight)));
}

// The other common calls, with the same arguments (t converted, `given` the caller's targets) plus:
//   * with_loss: the loss as cross_entropy_fast returns it;
//   * with_grad: the gradient (times grad_output), into `out` (see fast_out) or a new array like x;
//   * save_stats / saved_stats: the rows' statistics (float64, 2 a row) saved for a later gradient,
//     or read instead of recomputed (CrossEntropyLoss.forward and .backward).
// Returns the loss, the gradient, or (loss, gradient) when both are asked for. 16-bit logits (half >= 0,
// T float) as in cross_entropy_fast_typed, with a gradient of their dtype, or float32 into such an
// `out`.
template <typename T>
py::object cross_entropy_fast_with_typed(const py::array& x, int half, const py::array& t, const py::array& given,
                                         const py::object& weight, std::int64_t ignore_index,
                                         Reduction reduction, double grad_output, bool with_loss, bool with_grad,
                                         const py::object& out, const py::object& save_stats,
                                         const py::object& saved_stats, void (*kernel)(const CrossEntropyProblem<T>&)) {
    const ClassAxisView view = contiguous_view(x, 1);
    const py::object none = py::none();
    if (with_grad && !out.is_none() && !fast_out<T>(out, x, half, given, weight)) return none;
    const py::object row_loss =
        with_loss && reduction == Reduction::none ? py::object(py::array_t<T>(shape_without(x, 1))) : none;
    const py::dtype result_dtype = half >= 0 ? x.dtype() : py::dtype::of<T>();
    const py::object grad =
        !with_grad ? none
                   : !out.is_none() ? out
                                    : py::object(new_result(result_dtype, std::vector<py::ssize_t>(
                                                                              x.shape(), x.shape() + x.ndim())));
    const bool want_sum = with_loss && reduction != Reduction::none;
    const py::tuple result = run_cross_entropy<T>(x, half, 0.0, view, t, none, weight, ignore_index, 0.0, 0.0,
                                                  reduction, grad_output, none, row_loss, grad, save_stats,
                                                  saved_stats, want_sum, kernel);
    py::object loss = row_loss;
    if (want_sum) {
        loss = reduced_loss(result, reduction);
    } else if (half >= 0 && !row_loss.is_none()) {
        loss = narrowed_result(row_loss, x.dtype(), half);
    }
    if (!with_grad) return loss;
    if (!with_loss) return grad;
    return py::make_tuple(loss, grad);
}

py::object cross_entropy_fast_with(const py::handle& input, const py::handle& target, std::int64_t ignore_index,
                                   int reduction, double grad_output, bool with_loss, bool with_grad,
                                   const py::object& out, const py::object& save_stats, const py::object& saved_stats,
                                   const py::handle& weight) {
    if (!(with_loss || with_grad)) return py::none();
    const std::optional<FastCall> call = fast_call(input, target, reduction, weight);
    if (!call) return py::none();
    const py::array given = py::reinterpret_borrow<py::array>(target);
    const Reduction r = static_cast<Reduction>(reduction);
    const KernelTable& table = kernels();
    if (call->float64) {
        return cross_entropy_fast_with_typed<double>(call->x, -1, call->t, given, call->weight, ignore_index, r,
                                                     grad_output, with_loss, with_grad, out, save_stats, saved_stats,
                                                     table.cross_entropy_double);
    }
    return cross_entropy_fast_with_typed<float>(call->x, call->half, call->t, given, call->weight, ignore_index, r,
                                                grad_output, with_loss, with_grad, out, save_stats, saved_stats,
                                                table.cross_entropy_float);
}

// nll_loss(log_probs, t, reduction=...), as cross_entropy_fast: the mean or the sum as a float, or
// the row losses as a new array of the input's dtype. 16-bit log-probabilities (half >= 0, T float)
// are read in place, their row losses rounded to their dtype.
template <typename T>
py::object nll_loss_fast_typed(const py::array& x, int half, const py::array& t, const py::object& weight,
                               std::int64_t ignore_index, Reduction reduction) {
    const ClassAxisView view = contiguous_view(x, 1);
    const py::object row_loss =
        reduction == Reduction::none ? py::object(py::array_t<T>(shape_without(x, 1))) : py::none();
    const py::tuple result = run_nll<T>(x, half, view, t, weight, ignore_index, row_loss);
    if (reduction != Reduction::none) return reduced_loss(result, reduction);
    return half >= 0 ? py::object(narrowed_result(row_loss, x.dtype(), half)) : row_loss;
}

py::object nll_loss_fast(const py::handle& input, const py::handle& target, std::int64_t ignore_index, int reduction,
                         const py::handle& weight) {
    const std::optional<FastCall> call = fast_call(input, target, reduction, weight);
    if (!call) return py::none();
    const Reduction r = static_cast<Reduction>(reduction);
    if (call->float64) return nll_loss_fast_typed<double>(call->x, -1, call->t, call->weight, ignore_index, r);
    return nll_loss_fast_typed<float>(call->x, call->half, call->t, call->weight, ignore_index, r);
}

void register_loss(py::module_& module) {
    module.def("cross_entropy_fast", &cross_entropy_fast, py::arg("input"), py::arg("target"),
               py::arg("ignore_index"), py::arg("reduction"), py::arg("weight") = py::none());
    module.def("cross_entropy_fast_with", &cross_entropy_fast_with, py::arg("input"), py::arg("target"),
               py::arg("ignore_index"), py::arg("reduction"), py::arg("grad_output"), py::arg("with_loss"),
               py::arg("with_grad"), py::arg("out"), py::arg("save_stats"), py::arg("saved_stats"),
               py::arg("weight") = py::none());
    module.def(
        "cross_entropy",
        [](const py::array& input, const ViewTuple& view_tuple, const py::object& target_index,
           const py::object& target_prob, const py::object& weight, std::int64_t ignore_index,
           double label_smoothing, double z_loss, int reduction, double grad_output, const py::object& grad_rows,
           const py::object& row_loss, const py::object& grad, const py::object& save_stats,
           const py::object& saved_stats, bool want_sum, int half, double softcap) {
            if (reduction < 0 || reduction > 2) throw py::value_error("unknown reduction code");
            const ClassAxisView view = to_view(view_tuple);
            const KernelTable& table = kernels();
            const Reduction r = static_cast<Reduction>(reduction);
            if (half >= 0 || has_dtype<float>(input)) {
                return run_cross_entropy<float>(input, half, softcap, view, target_index, target_prob, weight, ignore_index,
                                                label_smoothing, z_loss, r, grad_output, grad_rows, row_loss, grad,
                                                save_stats, saved_stats, want_sum, table.cross_entropy_float);
            }
            if (has_dtype<double>(input)) {
                return run_cross_entropy<double>(input, half, softcap, view, target_index, target_prob, weight, ignore_index,
                                                 label_smoothing, z_loss, r, grad_output, grad_rows, row_loss, grad,
                                                 save_stats, saved_stats, want_sum, table.cross_entropy_double);
            }
            throw py::type_error("input must be float32 or float64");
        },
        py::arg("input"), py::arg("view"), py::arg("target_index"), py::arg("target_prob"), py::arg("weight"),
        py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("z_loss"), py::arg("reduction"),
        py::arg("grad_output"),
        py::arg("grad_rows"), py::arg("row_loss"), py::arg("grad"), py::arg("save_stats"),
        py::arg("saved_stats"), py::arg("want_sum"), py::arg("half") = -1, py::arg("softcap") = 0.0);

    module.def("nll_loss_fast", &nll_loss_fast, py::arg("input"), py::arg("target"), py::arg("ignore_index"),
               py::arg("reduction"), py::arg("weight") = py::none());
    module.def(
        "nll_loss",
        [](const py::array& input, const ViewTuple& view_tuple, const py::object& target, const py::object& weight,
           std::int64_t ignore_index, const py::object& row_loss, int half) {
            const ClassAxisView view = to_view(view_tuple);
            if (half >= 0 || has_dtype<float>(input)) {
                return run_nll<float>(input, half, view, target, weight, ignore_index, row_loss);
            }
            if (has_dtype<double>(input)) {
                return run_nll<double>(input, half, view, target, weight, ignore_index, row_loss);
            }
            throw py::type_error("input must be float32 or float64");
        },
        py::arg("input"), py::arg("view"), py::arg("target"), py::arg("weight"), py::arg("ignore_index"),
        py::arg("row_loss"), py::arg("half") = -1);
}

}  // namespace fastxent::bindings
