// Scoring kernels for language-model evaluation: per row the log-probability of each target, the
// logsumexp, the argmax, the rank of each target and the entropy of the softmax; and per span of rows
// the summed target log-probability and whether every target was the greedy choice. Compiled once per
// instruction set (FASTXENT_ISA names the namespace; see CMakeLists.txt).
//
// Note: one pass. A row is read from memory once: the max pass brings it into cache, and the passes
// that follow (exponentials with the entropy's moment, the first index of the max, the counts of
// larger logits) read it from there. Nothing of the row's size is ever written.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kernels.h"
#include "parallel.h"
#include "row_engine.h"
#include "score.h"
#include "staging.h"

namespace fastxent {
namespace FASTXENT_ISA {

namespace {

// Span rows are handed out in items of about this many elements (whole rows, at least one). Every
// row's result is independent of the others, so the item size never changes a result.
constexpr std::int64_t kSpanItemElements = 1 << 15;

// The statistics of one contiguous row.
template <typename T>
struct RowScore {
    T max;                 // ignoring NaN (see row_max)
    double log_sum;        // log(sum_c exp(x_c - max))
    double logsumexp;
    double entropy;        // NaN unless asked for
    std::int64_t argmax;
    std::int64_t greater;  // how many logits are strictly greater than the one asked about

    // log_softmax at class t, as (x_t - max) - log_sum.
    double log_prob(T target_logit) const {
        return (static_cast<double>(target_logit) - static_cast<double>(max)) - log_sum;
    }
};

// Note: argmax and NaN. numpy.argmax returns the first NaN of a row that has one, otherwise the first
// index of the max. The max ignores NaN, so the sum of exponentials is NaN exactly when the row has a
// NaN or its max is infinite (inf - inf); only then is the row searched for a NaN. A row of -inf has
// argmax 0, as in NumPy.
//
// Two passes over the row: the max with its first index and the count of logits above `value` (the
// first candidate's logit; see row_max_argmax_count), then the exponentials, with the entropy's moment
// when `with_entropy`.
//
// `next`: the next row to be scored, prefetched (see row_engine.h), or none; `first_pass`, when
// given, is the first pass already made (as the row was staged). Not inlined: inlined into the span
// kernel, its SSE2 sum of exponentials was left scalar.
template <typename T>
[[gnu::noinline]] RowScore<T> score_row(const T* x, std::int64_t classes, T value, bool with_entropy,
                                        NextRow next = {}, const MaxArgmaxCount<T>* first_pass = nullptr) {
    RowScore<T> score;
    if (first_pass != nullptr) {
        score.max = first_pass->max;
        score.argmax = first_pass->argmax;
        score.greater = first_pass->greater;
    } else if (fits_scoring_pass<T>(classes)) {
        const MaxArgmaxCount<T> pass = row_max_argmax_count(x, classes, value);
        score.max = pass.max;
        score.argmax = pass.argmax;
        score.greater = pass.greater;
    } else {
        score.max = row_max(x, classes);
        score.argmax = row_first_index_of(x, classes, score.max);
        score.greater = row_count_greater(x, classes, value);
    }
    double sum = 0.0;
    double moment = 0.0;
    if (with_entropy) {
        row_sum_exp_and_moment(x, classes, score.max, sum, moment, next);
    } else {
        sum = row_sum_exp(x, classes, score.max, next);
    }
    score.log_sum = std::log(sum);
    score.logsumexp =
        logsumexp_from_stats(RowStats{static_cast<double>(score.max), score.log_sum}, x, 1, classes);
    score.entropy = with_entropy ? score.log_sum - moment / sum : std::numeric_limits<double>::quiet_NaN();
    if (sum != sum) {
        const std::int64_t nan_at = row_first_nan(x, classes);
        if (nan_at < classes) score.argmax = nan_at;
    }
    return score;
}

// The first candidate's logit of a row, logit(t) being the logit of class t (NaN when there is no
// candidate: nothing is greater).
template <typename T, typename Logit>
T first_candidate_logit(const ScoreProblem<T>& p, std::int64_t row, Logit logit) {
    return p.candidates > 0 ? logit(p.target[row * p.candidates]) : std::numeric_limits<T>::quiet_NaN();
}

// Note: 16-bit rows. A 16-bit row (without a soft cap) is converted into the staging buffer by the
// first scoring pass itself, reading the first candidate's logit from the 16-bit array beforehand:
// the row is then read once from memory and once from the buffer, as a float32 row read in place,
// instead of a separate conversion pass before the two passes. Float16 where the hardware converts
// it (see staging.h) is the exception: there the separate conversion is the faster.
// (Converting in each pass instead, and never writing the buffer, was slower: 1.13 times float32's
// time on 2048 x 32000 bfloat16 with AVX2, against 1.09 this way; the pass of exponentials is bound
// by arithmetic, and the conversion adds to it.)
template <typename T>
bool stages_in_first_pass(const Logits<T>& logits, std::int64_t classes) {
    const bool hardware = kFloat16Hardware && logits.format == HalfFormat::float16;
    return logits.half != nullptr && logits.cap == 0.0 && !hardware && fits_scoring_pass<T>(classes);
}

template <typename T>
MaxArgmaxCount<T> load_with_first_pass(const Logits<T>& logits, std::int64_t offset, std::int64_t classes,
                                       T value, T* buffer) {
    using Index = typename SameWidthIndex<T>::type;
    const std::uint16_t* source = logits.half + offset;
    if (logits.format == HalfFormat::bfloat16) {
        return max_argmax_count(classes, value, [source, buffer](Index i) {
            const T v = static_cast<T>(bfloat16_to_float(source[i]));
            buffer[i] = v;
            return v;
        });
    }
    return max_argmax_count(classes, value, [source, buffer](Index i) {
        const T v = static_cast<T>(float16_to_float(source[i]));
        buffer[i] = v;
        return v;
    });
}

// Every statistic of one contiguous row and its candidates; `next` and `first_pass` as in score_row.
template <typename T>
void score_whole_row(const ScoreProblem<T>& p, const T* x, std::int64_t row, NextRow next = {},
                     const MaxArgmaxCount<T>* first_pass = nullptr) {
    const std::int64_t classes = p.view.classes;
    const std::int64_t* target = p.target + row * p.candidates;
    const T value = first_candidate_logit(p, row, [x](std::int64_t t) { return x[t]; });
    const RowScore<T> score = score_row(x, classes, value, true, next, first_pass);
    p.lse[row] = static_cast<T>(score.logsumexp);
    p.argmax[row] = score.argmax;
    p.entropy[row] = static_cast<T>(score.entropy);
    for (std::int64_t k = 0; k < p.candidates; ++k) {
        const std::int64_t at = row * p.candidates + k;
        const std::int64_t t = target[k];
        const T target_logit = x[t];
        p.logprob[at] = static_cast<T>(score.log_prob(target_logit));
        p.is_greedy[at] = t == score.argmax;
        p.rank[at] = k == 0 ? score.greater : row_count_greater(x, classes, target_logit);
    }
}

// A tile of `lanes` consecutive rows starting at `row0`, class c of lane l at x[c * stride + l]:
// every statistic vectorised across the rows; only the target gathers are scalar.
template <typename T>
void score_tile(const ScoreProblem<T>& p, const T* x, std::int64_t stride, std::int64_t row0,
                std::int64_t lanes) {
    const std::int64_t classes = p.view.classes;
    T max[kTileLanes];
    double sum[kTileLanes];
    double moment[kTileLanes];
    double log_sum[kTileLanes];
    std::int64_t argmax[kTileLanes];
    tile_max_sum_and_moment(x, stride, classes, lanes, max, sum, moment);
    for (std::int64_t l = 0; l < lanes; ++l) log_sum[l] = log_double(sum[l]);
    tile_argmax(x, stride, classes, lanes, max, argmax);
    for (std::int64_t l = 0; l < lanes; ++l) {
        const std::int64_t row = row0 + l;
        const RowStats stats{static_cast<double>(max[l]), log_sum[l]};
        p.lse[row] = static_cast<T>(logsumexp_from_stats(stats, x + l, stride, classes));
        p.argmax[row] = argmax[l];
        p.entropy[row] = static_cast<T>(log_sum[l] - moment[l] / sum[l]);
    }
    T target_logit[kTileLanes];
    std::int64_t rank[kTileLanes];
    for (std::int64_t k = 0; k < p.candidates; ++k) {
        for (std::int64_t l = 0; l < lanes; ++l) {
            target_logit[l] = x[p.target[(row0 + l) * p.candidates + k] * stride + l];
        }
        tile_count_greater(x, stride, classes, lanes, target_logit, rank);
        for (std::int64_t l = 0; l < lanes; ++l) {
            const std::int64_t at = (row0 + l) * p.candidates + k;
            const double log_prob =
                (static_cast<double>(target_logit[l]) - static_cast<double>(max[l])) - log_sum[l];
            p.logprob[at] = static_cast<T>(log_prob);
            p.is_greedy[at] = p.target[at] == argmax[l];
            p.rank[at] = rank[l];
        }
    }
}

// One work item of a call on 16-bit logits: each row, tile or transposed tile is read into the
// thread's staging buffer and scored there.
template <typename T>
void score_item_staged(const ScoreProblem<T>& problem, const Logits<T>& logits, const WorkPlan& plan,
                       const ItemRows& range, T* buffer) {
    const ClassAxisView& view = problem.view;
    const std::int64_t classes = view.classes;
    if (plan.strategy == Strategy::rows) {
        const bool fused = stages_in_first_pass(logits, classes);
        for (std::int64_t row = range.first; row < range.last; ++row) {
            const std::int64_t offset = view.row_offset(row);
            const NextRow next = next_row(logits, view, row);
            if (fused) {
                const T value =
                    first_candidate_logit(problem, row, [&logits, offset](std::int64_t t) { return logits.at(offset + t); });
                const MaxArgmaxCount<T> pass = load_with_first_pass(logits, offset, classes, value, buffer);
                score_whole_row(problem, buffer, row, next, &pass);
            } else {
                logits.load(offset, classes, buffer, nullptr);
                score_whole_row(problem, buffer, row, next);
            }
        }
    } else if (plan.strategy == Strategy::columns) {
        logits.load_tile(view.row_offset(range.outer) + range.lane0, view.class_stride, classes, range.lanes,
                         buffer, nullptr);
        score_tile(problem, buffer, kTileLanes, range.first, range.lanes);
    } else {
        logits.load_transposed(view.row_offset(range.first), view.outer_stride, classes, range.lanes, buffer,
                               nullptr);
        score_tile(problem, buffer, kTileLanes, range.first, range.lanes);
    }
}

template <typename T>
void score_kernel(const ScoreProblem<T>& problem) {
    const ClassAxisView& view = problem.view;
    const WorkPlan plan = plan_work(view);
    const std::int64_t classes = view.classes;
    const Logits<T> logits{problem.input, problem.input_half, problem.half_format, 0.0};
    const bool staged = logits.staged();
    const int threads = staged_threads(plan.items, view.size(), staged, problem.staging_threads);
    const std::int64_t per_thread = staged ? staging_size(view, false, false) : 0;

    for_each_item(plan.items, threads, [&](std::int64_t item) {
        const ItemRows range = item_rows(plan, view, item);
        if (staged) {
            score_item_staged(problem, logits, plan, range, problem.staging + current_thread() * per_thread);
        } else if (plan.strategy == Strategy::rows) {
            const std::int64_t first = range.first;
            const std::int64_t last = range.last;
            for (std::int64_t row = first; row < last; ++row) {
                score_whole_row(problem, problem.input + view.row_offset(row), row, next_row(logits, view, row));
            }
        } else if (plan.strategy == Strategy::columns) {
            const std::int64_t outer = range.outer;
            const std::int64_t lane0 = range.lane0;
            const std::int64_t lanes = range.lanes;
            score_tile(problem, problem.input + view.row_offset(outer) + lane0, view.class_stride,
                       outer * view.inner + lane0, lanes);
        } else {
            const std::int64_t first = range.first;
            const std::int64_t lanes = range.lanes;
            T tile[kTileClasses * kTileLanes];
            transpose_into_tile(problem.input + view.row_offset(first), view.outer_stride, classes, lanes, tile);
            score_tile(problem, tile, kTileLanes, first, lanes);
        }
    });
}

// One row buffer per thread, for rows whose classes are not contiguous (inner > 1) or are 16-bit.
template <typename T>
struct RowBuffers {
    T* data = nullptr;
    ~RowBuffers() { delete[] data; }
};

// Note: spans read only their rows. Each covered row is scored once, however many spans hold it, into
// per-row scratch; each span then adds its rows' log-probabilities in row order (in double), so the
// result depends neither on the thread count nor on the other spans. Rows outside every span are
// never read: a NaN or a garbage target there changes nothing.
template <typename T>
void score_spans_kernel(const ScoreSpansProblem<T>& problem) {
    const ClassAxisView& view = problem.view;
    const std::int64_t rows = view.rows();
    const std::int64_t classes = view.classes;
    const Logits<T> logits{problem.input, problem.input_half, problem.half_format, 0.0};
    const bool contiguous = view.inner == 1 && !logits.staged();  // read in place, without a buffer

    std::int64_t rows_per_item = classes > 0 ? kSpanItemElements / classes : kSpanItemElements;
    if (rows_per_item < 1) rows_per_item = 1;
    const std::int64_t items = (rows + rows_per_item - 1) / rows_per_item;
    const int threads = threads_for(items, view.size());
    RowBuffers<T> buffers;
    if (!contiguous) buffers.data = new T[static_cast<std::size_t>(threads) * static_cast<std::size_t>(classes)];

    const bool fused = view.inner == 1 && stages_in_first_pass(logits, classes);
    const auto score_item = [&](std::int64_t item) {
        T* buffer = contiguous ? nullptr : buffers.data + current_thread() * classes;
        const std::int64_t first = item * rows_per_item;
        const std::int64_t last = first + rows_per_item < rows ? first + rows_per_item : rows;
        for (std::int64_t row = first; row < last; ++row) {
            if (problem.row_covered[row] == 0) continue;
            const T* x = nullptr;
            const std::int64_t t = problem.target[row];
            MaxArgmaxCount<T> pass;
            // The next row, when it is covered and its classes are contiguous.
            const NextRow next =
                next_row(logits, view, row, view.inner == 1 && row + 1 < rows && problem.row_covered[row + 1] != 0);
            if (fused) {
                const std::int64_t offset = view.row_offset(row);
                pass = load_with_first_pass(logits, offset, classes, logits.at(offset + t), buffer);
                x = buffer;
            } else if (view.inner == 1) {
                x = logits.read(view.row_offset(row), classes, buffer, nullptr);
            } else {
                const std::int64_t source = view.row_offset(row / view.inner) + row % view.inner;
                for (std::int64_t c = 0; c < classes; ++c) buffer[c] = logits.at(source + c * view.class_stride);
                x = buffer;
            }
            const RowScore<T> score = score_row(x, classes, x[t], false, next, fused ? &pass : nullptr);
            problem.row_logprob[row] = score.log_prob(x[t]);
            problem.row_greedy[row] = t == score.argmax;
        }
    };
    // Items of uneven work (rows outside every span are skipped) go to the threads one at a time; on
    // one thread, in a plain loop (see the Note on one thread without a team, parallel.h).
    if (threads <= 1) {
        run_items(score_item, 0, items);
    } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (std::int64_t item = 0; item < items; ++item) run_items(score_item, item, item + 1);
    }

    std::int64_t span_rows = 0;
    for (std::int64_t s = 0; s < problem.spans; ++s) span_rows += problem.lengths[s];
    const int span_threads = threads_for(problem.spans, span_rows);
    for_each_item(problem.spans, span_threads, [&](std::int64_t s) {
        const std::int64_t first = problem.starts[s];
        const std::int64_t last = first + problem.lengths[s];
        double total = 0.0;
        bool greedy = true;
        for (std::int64_t row = first; row < last; ++row) {
            total += problem.row_logprob[row];
            greedy = greedy && problem.row_greedy[row];
        }
        problem.span_logprob[s] = total;
        problem.span_greedy[s] = greedy;
    });
}

}  // namespace

void register_score_kernels(KernelTable& table) {
    table.score_float = score_kernel<float>;
    table.score_double = score_kernel<double>;
    table.score_spans_float = score_spans_kernel<float>;
    table.score_spans_double = score_spans_kernel<double>;
}

}  // namespace FASTXENT_ISA
}  // namespace fastxent
