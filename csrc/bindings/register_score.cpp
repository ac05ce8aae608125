// score and score_spans: per-row statistics for language-model evaluation.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "arrays.h"
#include "core/dispatch.h"
#include "core/score.h"

namespace fastxent::bindings {

namespace {

std::string out_of_bounds_message(std::int64_t target, std::int64_t classes, std::int64_t position) {
    return "target " + std::to_string(target) + " is out of bounds for " + std::to_string(classes) +
           " classes (valid: 0 <= target < " + std::to_string(classes) + "); first found at flat position " +
           std::to_string(position);
}

// The first position i with target[i] outside [0, classes) (and covered[i] set, when covered is given),
// or -1.
std::int64_t first_target_out_of_bounds(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                                        const std::uint8_t* covered) {
    for (std::int64_t i = 0; i < count; ++i) {
        if (covered != nullptr && covered[i] == 0) continue;
        if (target[i] < 0 || target[i] >= classes) return i;
    }
    return -1;
}

template <typename T>
void run_score(const py::array& input, int half, const ClassAxisView& axis_view, const py::object& target,
               std::int64_t candidates, const py::object& logprob, const py::object& is_greedy,
               const py::object& rank, const py::object& lse, const py::object& argmax,
               const py::object& entropy, void (*kernel)(const ScoreProblem<T>&)) {
    const ClassAxisView view = tiled_view<T>(axis_view);
    if (candidates < 0) throw py::value_error("negative number of candidates");
    const std::int64_t rows = view.rows();
    const std::int64_t targets = rows * candidates;
    ScoreProblem<T> problem;
    set_logits<T>(problem, input, half);
    problem.view = view;
    problem.candidates = candidates;
    problem.target = dense_data<std::int64_t>(target, "target", targets, false);
    problem.logprob = dense_data<T>(logprob, "logprob", targets, true);
    problem.is_greedy = dense_data<bool>(is_greedy, "is_greedy", targets, true);
    problem.rank = dense_data<std::int64_t>(rank, "rank", targets, true);
    problem.lse = dense_data<T>(lse, "lse", rows, true);
    problem.argmax = dense_data<std::int64_t>(argmax, "argmax", rows, true);
    problem.entropy = dense_data<T>(entropy, "entropy", rows, true);
    if (problem.target == nullptr || problem.logprob == nullptr || problem.is_greedy == nullptr ||
        problem.rank == nullptr || problem.lse == nullptr || problem.argmax == nullptr || problem.entropy == nullptr) {
        throw py::value_error("score needs the target and every output array");
    }
    if (rows > 0 && view.classes == 0) throw py::value_error("score needs at least one class");

    std::int64_t bad;
    {
        py::gil_scoped_release release;
        bad = first_target_out_of_bounds(problem.target, targets, view.classes, nullptr);
    }
    if (bad >= 0) throw py::index_error(out_of_bounds_message(problem.target[bad], view.classes, bad));

    std::vector<T> staging;
    set_staging(problem, staging, false, false);
    py::gil_scoped_release release;
    kernel(problem);
}

template <typename T>
void run_score_spans(const py::array& input, int half, const ClassAxisView& axis_view, const py::object& target,
                     const py::object& starts, const py::object& lengths, const py::object& span_logprob,
                     const py::object& span_greedy, void (*kernel)(const ScoreSpansProblem<T>&)) {
    const ClassAxisView view = tiled_view<T>(axis_view);
    const std::int64_t rows = view.rows();
    if (!py::isinstance<py::array>(starts)) throw py::value_error("starts must be an ndarray");
    const std::int64_t spans = static_cast<std::int64_t>(py::reinterpret_borrow<py::array>(starts).size());
    ScoreSpansProblem<T> problem;
    set_logits<T>(problem, input, half);
    problem.view = view;
    problem.target = dense_data<std::int64_t>(target, "target", rows, false);
    problem.starts = dense_data<std::int64_t>(starts, "starts", spans, false);
    problem.lengths = dense_data<std::int64_t>(lengths, "lengths", spans, false);
    problem.spans = spans;
    problem.span_logprob = dense_data<double>(span_logprob, "span_logprob", spans, true);
    problem.span_greedy = dense_data<bool>(span_greedy, "span_greedy", spans, true);
    if (problem.target == nullptr || problem.starts == nullptr || problem.lengths == nullptr ||
        problem.span_logprob == nullptr || problem.span_greedy == nullptr) {
        throw py::value_error("score_spans needs the target, the spans and every output array");
    }

    // Spans first (a bad span would make the coverage below index out of bounds), then the targets of
    // the rows the spans cover; nothing is computed before both are known to be valid.
    for (std::int64_t s = 0; s < spans; ++s) {
        const std::int64_t start = problem.starts[s];
        const std::int64_t length = problem.lengths[s];
        if (start < 0 || length < 0 || start > rows || length > rows - start) {
            throw py::index_error("span " + std::to_string(s) + " (start " + std::to_string(start) + ", length " +
                                  std::to_string(length) + ") is out of bounds for " + std::to_string(rows) +
                                  " rows (valid: 0 <= start, 0 <= length, start + length <= rows)");
        }
    }
    std::vector<std::uint8_t> covered(static_cast<std::size_t>(rows));
    std::int64_t bad;
    bool any_covered = false;
    {
        py::gil_scoped_release release;
        // Coverage from a difference array: +1 at each start, -1 after each end, then a running sum.
        std::vector<std::int64_t> change(static_cast<std::size_t>(rows) + 1, 0);
        for (std::int64_t s = 0; s < spans; ++s) {
            if (problem.lengths[s] == 0) continue;
            change[problem.starts[s]] += 1;
            change[problem.starts[s] + problem.lengths[s]] -= 1;
        }
        std::int64_t depth = 0;
        for (std::int64_t row = 0; row < rows; ++row) {
            depth += change[row];
            covered[row] = depth > 0 ? 1 : 0;
            any_covered = any_covered || depth > 0;
        }
        bad = first_target_out_of_bounds(problem.target, rows, view.classes, covered.data());
    }
    if (any_covered && view.classes == 0) throw py::value_error("score_spans needs at least one class");
    if (bad >= 0) throw py::index_error(out_of_bounds_message(problem.target[bad], view.classes, bad));

    std::vector<double> row_logprob(static_cast<std::size_t>(rows));
    std::unique_ptr<bool[]> row_greedy(new bool[static_cast<std::size_t>(rows > 0 ? rows : 1)]);
    problem.row_covered = covered.data();
    problem.row_logprob = row_logprob.data();
    problem.row_greedy = row_greedy.get();
    py::gil_scoped_release release;
    kernel(problem);
}

}  // namespace

void register_score(py::module_& module) {
    // Outputs are C-contiguous arrays allocated by the caller: logprob, is_greedy, rank of
    // (rows, candidates) entries; lse, argmax, entropy of (rows) entries.
    module.def(
        "score",
        [](const py::array& input, const ViewTuple& view_tuple, const py::object& target, std::int64_t candidates,
           const py::object& logprob, const py::object& is_greedy, const py::object& rank, const py::object& lse,
           const py::object& argmax, const py::object& entropy, int half) {
            const ClassAxisView view = to_view(view_tuple);
            const KernelTable& table = kernels();
            if (half >= 0 || has_dtype<float>(input)) {
                run_score<float>(input, half, view, target, candidates, logprob, is_greedy, rank, lse, argmax, entropy,
                                 table.score_float);
            } else if (has_dtype<double>(input)) {
                run_score<double>(input, half, view, target, candidates, logprob, is_greedy, rank, lse, argmax, entropy,
                                  table.score_double);
            } else {
                throw py::type_error("input must be float32 or float64");
            }
        },
        py::arg("input"), py::arg("view"), py::arg("target"), py::arg("candidates"), py::arg("logprob"),
        py::arg("is_greedy"), py::arg("rank"), py::arg("lse"), py::arg("argmax"), py::arg("entropy"),
        py::arg("half") = -1);

    // starts, lengths: int64 (spans); span_logprob: float64 (spans); span_greedy: bool (spans).
    module.def(
        "score_spans",
        [](const py::array& input, const ViewTuple& view_tuple, const py::object& target, const py::object& starts,
           const py::object& lengths, const py::object& span_logprob, const py::object& span_greedy, int half) {
            const ClassAxisView view = to_view(view_tuple);
            const KernelTable& table = kernels();
            if (half >= 0 || has_dtype<float>(input)) {
                run_score_spans<float>(input, half, view, target, starts, lengths, span_logprob, span_greedy,
                                       table.score_spans_float);
            } else if (has_dtype<double>(input)) {
                run_score_spans<double>(input, half, view, target, starts, lengths, span_logprob, span_greedy,
                                        table.score_spans_double);
            } else {
                throw py::type_error("input must be float32 or float64");
            }
        },
        py::arg("input"), py::arg("view"), py::arg("target"), py::arg("starts"), py::arg("lengths"),
        py::arg("span_logprob"), py::arg("span_greedy"), py::arg("half") = -1);
}

}  // namespace fastxent::bindings
