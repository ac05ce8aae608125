// log_softmax, softmax and logsumexp over the class axis. Compiled once per instruction set
// (FASTXENT_ISA names the namespace; see CMakeLists.txt).
#include <cmath>

#include "kernels.h"
#include "parallel.h"
#include "row_engine.h"
#include "staging.h"
#include "stream.h"

namespace fastxent {
namespace FASTXENT_ISA {
namespace {

// write_log_softmax into a large output (see the Note on streaming stores, stream.h): a block of
// the row at a time into a buffer in cache, and from there its whole 64-byte lines by streaming
// stores; the elements before the row's first line boundary and after its last are stored as usual.
// The same values as write_log_softmax's. out may be x (each block is read before it is written).
template <typename T>
void stream_log_softmax(const T* x, T* out, std::int64_t n, const RowStats& stats) {
    constexpr std::int64_t kBlock = 1024 / static_cast<std::int64_t>(sizeof(T)) * 4;  // 4 KiB
    constexpr std::int64_t per_line = kLineBytes / static_cast<std::int64_t>(sizeof(T));
    const std::int64_t head = line_head(out, n);
    write_log_softmax(x, out, head, stats);
    T buffer[kBlock];
    std::int64_t i = head;
    while (n - i >= per_line) {
        const std::int64_t rest = (n - i) / per_line * per_line;
        const std::int64_t count = rest < kBlock ? rest : kBlock;
        write_log_softmax(x + i, buffer, count, stats);
        stream_store(out + i, buffer, count);
        i += count;
    }
    write_log_softmax(x + i, out + i, n - i, stats);
}

// One contiguous row: statistics, then the output row `out` (which may be `x`), or its logsumexp.
// `next`: the next row, prefetched (see row_engine.h), or null. `stream`: the output is large, and
// log_softmax writes it by streaming stores (stream_log_softmax).
template <typename T>
void softmax_row(const SoftmaxProblem<T>& problem, const T* x, std::int64_t row, T* out, NextRow next = {},
                 bool stream = false) {
    const std::int64_t classes = problem.view.classes;
    if (problem.op == SoftmaxOp::softmax) {
        // The exponentials are written once, while they are summed, then scaled in place (see the
        // Note on the gradient's exponentials in row_engine.h).
        const T max = row_max(x, classes);
        const RowStats stats{static_cast<double>(max), std::log(row_exps_into(x, out, classes, max, next))};
        scale_softmax(out, classes, stats);
        return;
    }
    const RowStats stats = row_stats(x, classes, next);
    if (problem.op == SoftmaxOp::log_softmax && stream) {
        stream_log_softmax(x, out, classes, stats);
    } else if (problem.op == SoftmaxOp::log_softmax) {
        write_log_softmax(x, out, classes, stats);
    } else {
        problem.output[row] = static_cast<T>(logsumexp_from_stats(stats, x, 1, classes));
    }
}

// Note: logs of whole rows taken together. log_softmax, softmax and logsumexp of float rows of up
// to kLogRowsClasses classes take each row's max and sum first, kLogRows rows at a time, then the
// rows' logs (and for softmax the reciprocals of the sums, exp(-log(sum)) as inverse_sum's) in one
// vectorised pass (log_double, within an ulp as the libm log it replaces), then their outputs from
// the rows again, still in cache (at most 40 KiB). Measured against a libm log per row, paired in
// one process, two threads: float32 log_softmax of 52428 x 80 in 0.83 of the time, 32768 x 100 in
// 0.85, 32768 x 128 in 0.92, 26214 x 160 in 0.94; 200 classes 1.00, 500 classes 1.05 (the second
// read of the rows catches up), and float64 rows of 100 classes 1.05. Softmax, whose per-row
// reciprocal was a scalar exponential in double as well: 52428 x 80 in 0.64, 32768 x 100 in 0.73,
// 32768 x 128 in 0.73, 26214 x 160 in 0.77.
constexpr std::int64_t kLogRowsClasses = 160;

// Rows first .. last - 1 of a log_softmax, softmax or logsumexp (kOp), their logs taken together
// (see the Note above). Softmax stores its exponentials into the output while it sums them, as
// softmax_row, and scales them there by the reciprocals of the sums, exp(-log(sum)) as inverse_sum's.
template <SoftmaxOp kOp, typename T>
void softmax_rows(const SoftmaxProblem<T>& problem, std::int64_t first, std::int64_t last, const Logits<T>& logits) {
    const ClassAxisView& view = problem.view;
    const std::int64_t classes = view.classes;
    for (std::int64_t start = first; start < last; start += kLogRows) {
        const std::int64_t count = last - start < kLogRows ? last - start : kLogRows;
        T max[kLogRows];
        double sum[kLogRows];
        double log_sum[kLogRows];
        for (std::int64_t l = 0; l < count; ++l) {
            const std::int64_t row = start + l;
            const T* x = problem.input + view.row_offset(row);
            max[l] = row_max(x, classes);
            if constexpr (kOp == SoftmaxOp::softmax) {
                sum[l] = row_exps_into(x, problem.output + row * classes, classes, max[l], next_row(logits, view, row));
            } else {
                sum[l] = row_sum_exp(x, classes, max[l], next_row(logits, view, row));
            }
        }
        for (std::int64_t l = 0; l < count; ++l) log_sum[l] = log_double(sum[l]);
        if constexpr (kOp == SoftmaxOp::softmax) {
            double inverse[kLogRows];
            for (std::int64_t l = 0; l < count; ++l) inverse[l] = exp_double(-log_sum[l]);
            for (std::int64_t l = 0; l < count; ++l) {
                T* out = problem.output + (start + l) * classes;
                const T scale = static_cast<T>(inverse[l]);
                for (std::int64_t i = 0; i < classes; ++i) out[i] *= scale;
            }
        } else {
            for (std::int64_t l = 0; l < count; ++l) {
                const std::int64_t row = start + l;
                const T* x = problem.input + view.row_offset(row);
                const RowStats stats{static_cast<double>(max[l]), log_sum[l]};
                if constexpr (kOp == SoftmaxOp::log_softmax) {
                    write_log_softmax(x, problem.output + row * classes, classes, stats);
                } else {
                    problem.output[row] = static_cast<T>(logsumexp_from_stats(stats, x, 1, classes));
                }
            }
        }
    }
}

// A tile of `lanes` rows laid out as x[c * stride + l]; outputs go to out[c * out_stride + l] (or
// out[l] for logsumexp). `transposed`: the tile holds transposed rows (small_rows), not a tile along
// an inner axis (columns). `max`, when not null, is the tile's max, already taken.
template <typename T>
void softmax_tile(SoftmaxOp op, const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes,
                  T* out, std::int64_t out_stride, bool transposed,
                  const TilePrefetch<T>& prefetch = TilePrefetch<T>{}, const T* max = nullptr) {
    TileStats<T> tile;
    if (op == SoftmaxOp::softmax && transposed) {
        // The exponentials are stored into the output by the sums and scaled there (as softmax_row),
        // for transposed rows only (see the Note on a tile's gradient exponentials in loss.cpp).
        tile_max(x, stride, classes, lanes, tile.max);
        tile_sums<T, SumTerms::written_and_stored>(x, stride, classes, lanes, true, tile, prefetch, true, out,
                                                   out_stride);
        T scale[kTileLanes];
        for (std::int64_t l = 0; l < lanes; ++l) scale[l] = static_cast<T>(tile.inverse[l]);
        for (std::int64_t c = 0; c < classes; ++c) {
            T* out_row = out + c * out_stride;
            for (std::int64_t l = 0; l < lanes; ++l) out_row[l] *= scale[l];
        }
        return;
    }
    // A float log_softmax takes its logs in float (log_float). Softmax and logsumexp need them in
    // double: softmax's 1 / sum is exp(-log_sum) (see TileStats).
    constexpr bool float_logs = std::is_same_v<T, float>;
    const bool double_logs = op != SoftmaxOp::log_softmax || !float_logs;
    if (max != nullptr) {
        for (std::int64_t l = 0; l < lanes; ++l) tile.max[l] = max[l];
    } else {
        tile_max(x, stride, classes, lanes, tile.max);
    }
    tile_sums(x, stride, classes, lanes, op == SoftmaxOp::softmax, tile, prefetch, double_logs);
    if (op == SoftmaxOp::logsumexp) {
        for (std::int64_t l = 0; l < lanes; ++l) {
            out[l] = static_cast<T>(logsumexp_from_stats(tile.row(l), x + l, stride, classes));
        }
        return;
    }
    T log_sum[kTileLanes];  // (x - max) - log(sum), in that order, as in write_log_softmax
    T scale[kTileLanes];
    if (op == SoftmaxOp::log_softmax && float_logs) {
        for (std::int64_t l = 0; l < lanes; ++l) {
            log_sum[l] = static_cast<T>(log_float(static_cast<float>(tile.sum[l])));
        }
    } else if (op == SoftmaxOp::log_softmax) {
        for (std::int64_t l = 0; l < lanes; ++l) log_sum[l] = static_cast<T>(tile.log_sum[l]);
    } else {
        for (std::int64_t l = 0; l < lanes; ++l) scale[l] = static_cast<T>(tile.inverse[l]);
    }
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* in_row = x + c * stride;
        T* out_row = out + c * out_stride;
        if (op == SoftmaxOp::log_softmax) {
            for (std::int64_t l = 0; l < lanes; ++l) out_row[l] = (in_row[l] - tile.max[l]) - log_sum[l];
        } else {
            for (std::int64_t l = 0; l < lanes; ++l) out_row[l] = fast_exp(in_row[l], tile.max[l]) * scale[l];
        }
    }
}

// softmax_tile of a tile along an inner axis that copies_tile: its max pass copies it, and the rest
// reads the copy (see the Note on copies of a tile along an inner axis in row_engine.h). Out of line,
// so that the copy's buffer is no part of the kernel's frame. GCC's -Waggressive-loop-optimizations
// is silenced here as for loss_copied_tile (loss.cpp): it warns of undefined behaviour in remainder
// loops that never run on a whole tile.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
#endif
template <typename T>
[[gnu::noinline]] void softmax_copied_tile(SoftmaxOp op, const T* x, std::int64_t stride, std::int64_t classes,
                                           std::int64_t lanes, T* out, std::int64_t out_stride,
                                           const TilePrefetch<T>& prefetch) {
    T copy[kSmallClasses * kTileLanes];
    T max[kTileLanes];
    tile_max_copy(x, stride, classes, lanes, max, copy);
    softmax_tile(op, copy, kTileLanes, classes, lanes, out, out_stride, false, prefetch, max);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Note: log_softmax of two classes. Rows of two contiguous classes, read in place: the max, one
// exponential and the log per row in one pass, and the outputs interleaved in a second (so that the
// output may be the input), instead of softmax_tile's transposes and passes over its tile arrays
// (see the Note on two classes in loss.cpp, whose reasoning and exponential this shares). The same
// operations in the same order as softmax_tile's on transposed rows, so the same bits (a row with a
// NaN is NaN either way).
// 16-bit rows of the same layout are converted into the staging buffer, a tile of rows at a time,
// and take the same loop there (see the Note on staged tiles of plain rows in loss.cpp).
template <typename T>
bool two_class_log_softmax(const SoftmaxProblem<T>& problem) {
    return problem.op == SoftmaxOp::log_softmax && problem.view.classes == 2 && problem.view.inner == 1 &&
           problem.view.outer_stride == 2;
}

template <typename T>
bool binary_log_softmax(const SoftmaxProblem<T>& problem) {
    return two_class_log_softmax(problem) && problem.input_half == nullptr && problem.output_half == nullptr;
}

template <typename T>
void binary_log_softmax_tile(const T* x, std::int64_t lanes, T* out) {
    T out0[kTileLanes];
    T out1[kTileLanes];
    for (std::int64_t l = 0; l < lanes; ++l) {
        const T first = x[2 * l];
        const T second = x[2 * l + 1];
        const T max = second > first ? second : first;
        const T sum = two_class_sum(first, second, max);
        T log_sum;
        if constexpr (std::is_same_v<T, float>) {
            log_sum = log_float(sum);
        } else {
            log_sum = static_cast<T>(log_double(static_cast<double>(sum)));
        }
        out0[l] = (first - max) - log_sum;
        out1[l] = (second - max) - log_sum;
    }
    for (std::int64_t l = 0; l < lanes; ++l) {
        out[2 * l] = out0[l];
        out[2 * l + 1] = out1[l];
    }
}

// Rows cut into chunks (kernels.h, kSplitClasses): the chunks' maxima and sums, then the outputs, each
// run over every chunk of every row in parallel; the chunks' maxima and sums are combined per row in
// chunk order. A staged call reads each chunk into its thread's buffer in each phase. A softmax is
// made from the exponentials its sums stored (see the Note on a split row's stored exponentials in
// loss.cpp): measured against a second exponential, paired in one process, the softmax of 4 x 256000
// logits in 0.78-0.82 of the time (float32, one and two threads), 0.65-0.69 (float64), 1.08 for
// float16 (staged, whose sums now take the written exponentials).
template <typename T>
void softmax_split(const SoftmaxProblem<T>& problem, const Logits<T>& logits, const Destination<T>& output,
                   std::int64_t chunks, int threads) {
    const ClassAxisView& view = problem.view;
    const std::int64_t rows = view.rows();
    const std::int64_t classes = view.classes;
    const std::int64_t items = rows * chunks;
    double* chunk_max = problem.workspace;
    double* chunk_sum = chunk_max + items;
    RowStats stats[kSplitMaxRows];
    const bool staged = logits.staged();
    const bool softmax = problem.op == SoftmaxOp::softmax;
    const std::int64_t per_thread = staged ? staging_size(view, false) : 0;

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        T* buffer = staged ? thread_staging(problem.staging, per_thread, false).values : nullptr;
        auto chunk_logits = [&](std::int64_t row, std::int64_t first, std::int64_t count) {
            return logits.read(view.row_offset(row) + first, count, buffer, nullptr);
        };
        // Each chunk's max and its sum against it (see the Note on a chunk's sum in row_engine.h),
        // prefetching the next chunk during the exponentials. A softmax sums the exponentials it
        // writes, and stores them unless staged (see the Note on a split row's stored exponentials
        // in loss.cpp).
#pragma omp for schedule(static)
        for (std::int64_t item = 0; item < items; ++item) {
            const auto [row, first, count] = split_chunk(item, chunks, classes);
            const T* x = chunk_logits(row, first, count);
            const T max = row_max(x, count);
            chunk_max[item] = static_cast<double>(max);
            const NextRow next = next_chunk(logits, view, item, items, chunks);
            if (softmax) {
                T* out = staged ? nullptr : problem.output + row * classes + first;
                chunk_sum[item] = row_exps_into(x, out, count, chunk_shift(max), next);
            } else {
                chunk_sum[item] = row_sum_exp(x, count, chunk_shift(max), next);
            }
        }
#pragma omp single
        for (std::int64_t row = 0; row < rows; ++row) {
            const double max = split_row_max(chunk_max, row, chunks);
            stats[row] = RowStats{max, std::log(split_row_sum(chunk_max, chunk_sum, row, chunks, max))};
            if (problem.op != SoftmaxOp::logsumexp) continue;
            // A row with an infinite max is NaN if it holds a NaN (see logsumexp_from_stats).
            double result = stats[row].max + stats[row].log_sum;
            if (std::isinf(stats[row].max)) {
                result = stats[row].max;
                for (std::int64_t first = 0; first < classes; first += kSplitChunk) {
                    const std::int64_t count = classes - first < kSplitChunk ? classes - first : kSplitChunk;
                    const double chunk = logsumexp_from_stats(stats[row], chunk_logits(row, first, count), 1, count);
                    if (std::isnan(chunk)) result = chunk;
                }
            }
            problem.output[row] = static_cast<T>(result);
        }
        if (problem.op != SoftmaxOp::logsumexp) {
#pragma omp for schedule(static)
            for (std::int64_t item = 0; item < items; ++item) {
                const auto [row, first, count] = split_chunk(item, chunks, classes);
                const std::int64_t offset = row * classes + first;
                if (softmax) {
                    const T factor = static_cast<T>(chunk_factor(stats[row], chunk_max[item]));
                    if (!staged) {
                        T* out = problem.output + offset;
                        for (std::int64_t i = 0; i < count; ++i) out[i] *= factor;
                        continue;
                    }
                    // The stored terms' softmax from the terms computed again: out is x here, each
                    // element read before it is written, as omp simd states.
                    const T* x = chunk_logits(row, first, count);
                    const T shift = chunk_shift(static_cast<T>(chunk_max[item]));
                    T* out = buffer;
#pragma omp simd
                    for (std::int64_t i = 0; i < count; ++i) out[i] = fast_exp(x[i], shift) * factor;
                    output.store(offset, out, nullptr, count);
                    continue;
                }
                const T* x = chunk_logits(row, first, count);
                T* out = staged ? buffer : problem.output + offset;
                write_log_softmax(x, out, count, stats[row]);
                if (staged) output.store(offset, out, nullptr, count);
            }
        }
    }
}

// One work item of a staged call (16-bit logits): each row, tile or transposed tile is read into the
// thread's staging buffer, computed there in place, and stored from there. Not inlined, as
// loss_item_staged.
template <typename T>
[[gnu::noinline]] void softmax_item_staged(const SoftmaxProblem<T>& problem, const Logits<T>& logits, const Destination<T>& output,
                         const WorkPlan& plan, const ItemRows& range, T* buffer) {
    const ClassAxisView& view = problem.view;
    const std::int64_t classes = view.classes;
    const bool reduces = problem.op == SoftmaxOp::logsumexp;
    if (plan.strategy == Strategy::rows) {
        for (std::int64_t row = range.first; row < range.last; ++row) {
            logits.load(view.row_offset(row), classes, buffer, nullptr);
            softmax_row(problem, buffer, row, buffer, next_row(logits, view, row));
            if (!reduces) output.store(row * classes, buffer, nullptr, classes);
        }
    } else if (plan.strategy == Strategy::columns) {
        logits.load_tile(view.row_offset(range.outer) + range.lane0, view.class_stride, classes, range.lanes,
                         buffer, nullptr);
        if (reduces) {
            softmax_tile(problem.op, buffer, kTileLanes, classes, range.lanes, problem.output + range.first, 0, false);
        } else {
            softmax_tile(problem.op, buffer, kTileLanes, classes, range.lanes, buffer, kTileLanes, false);
            output.store_tile(range.outer * classes * view.inner + range.lane0, view.inner, buffer, nullptr, classes,
                              range.lanes);
        }
    } else if (two_class_log_softmax(problem)) {
        logits.load(range.first * 2, range.lanes * 2, buffer, nullptr);
        binary_log_softmax_tile(buffer, range.lanes, buffer);
        output.store(range.first * 2, buffer, nullptr, range.lanes * 2);
    } else {
        logits.load_transposed(view.row_offset(range.first), view.outer_stride, classes, range.lanes, buffer,
                               nullptr);
        if (reduces) {
            softmax_tile(problem.op, buffer, kTileLanes, classes, range.lanes, problem.output + range.first, 0, true);
        } else {
            softmax_tile(problem.op, buffer, kTileLanes, classes, range.lanes, buffer, kTileLanes, true);
            output.store_transposed(range.first * classes, buffer, nullptr, classes, range.lanes);
        }
    }
}

template <typename T>
void softmax_kernel(const SoftmaxProblem<T>& problem) {
    const ClassAxisView& view = problem.view;
    const WorkPlan plan = plan_work(view);
    const std::int64_t rows = view.rows();
    const std::int64_t classes = view.classes;
    const bool reduces = problem.op == SoftmaxOp::logsumexp;
    const Logits<T> logits{problem.input, problem.input_half, problem.half_format, 0.0};
    const Destination<T> output{problem.output, problem.output_half, problem.half_format};
    const bool staged = logits.staged();
    const std::int64_t chunks = problem.workspace == nullptr ? 0 : split_chunks(view);
    if (chunks > 0) {
        softmax_split(problem, logits, output, chunks,
                      staged_threads(rows * chunks, view.size(), staged, problem.staging_threads));
        return;
    }
    const int threads = staged_threads(plan.items, view.size(), staged, problem.staging_threads);
    const std::int64_t per_thread = staged ? staging_size(view, false) : 0;
    const bool binary = binary_log_softmax(problem);
    const bool logs_together = std::is_same_v<T, float> && classes <= kLogRowsClasses;
    // Whole rows of a large log_softmax are streamed (see the Note on streaming stores, stream.h);
    // rows of a few lines are not (a row's first and last lines are stored as usual).
    const bool stream =
        problem.op == SoftmaxOp::log_softmax && !staged && classes >= kStreamRowElements && large_result<T>(view);
    // So is the large output of transposed tiles.
    const bool stream_tiles = !reduces && streams_tiles<T>(view);

    const auto item_softmax = [&](std::int64_t item) {
        const ItemRows range = item_rows(plan, view, item);
        if (staged) {
            softmax_item_staged(problem, logits, output, plan, range,
                                thread_staging(problem.staging, per_thread, false).values);
        } else if (plan.strategy == Strategy::rows && logs_together) {
            if (problem.op == SoftmaxOp::softmax) {
                softmax_rows<SoftmaxOp::softmax>(problem, range.first, range.last, logits);
            } else if (problem.op == SoftmaxOp::log_softmax) {
                softmax_rows<SoftmaxOp::log_softmax>(problem, range.first, range.last, logits);
            } else {
                softmax_rows<SoftmaxOp::logsumexp>(problem, range.first, range.last, logits);
            }
        } else if (plan.strategy == Strategy::rows) {
            for (std::int64_t row = range.first; row < range.last; ++row) {
                softmax_row(problem, problem.input + view.row_offset(row), row,
                            reduces ? nullptr : problem.output + row * classes, next_row(logits, view, row), stream);
            }
        } else if (plan.strategy == Strategy::columns) {
            const std::int64_t outer = range.outer;
            const std::int64_t lane0 = range.lane0;
            const std::int64_t lanes = range.lanes;
            const T* x = problem.input + view.row_offset(outer) + lane0;
            T* out = reduces ? problem.output + outer * view.inner + lane0
                             : problem.output + outer * classes * view.inner + lane0;
            const TilePrefetch<T> prefetch = next_tile(problem.input, plan, view, item);
            if (copies_tile<T>(view.class_stride, classes, lanes)) {
                softmax_copied_tile(problem.op, x, view.class_stride, classes, lanes, out, view.inner, prefetch);
            } else {
                softmax_tile(problem.op, x, view.class_stride, classes, lanes, out, view.inner, false, prefetch);
            }
        } else if (binary) {
            binary_log_softmax_tile(problem.input + range.first * 2, range.lanes, problem.output + range.first * 2);
        } else {
            const std::int64_t first = range.first;
            const std::int64_t lanes = range.lanes;
            T tile_in[kTileClasses * kTileLanes];
            T tile_out[kTileClasses * kTileLanes];
            transpose_into_tile(problem.input + view.row_offset(first), view.outer_stride, classes, lanes,
                                tile_in);
            const TilePrefetch<T> prefetch = next_tile(problem.input, plan, view, item);
            if (reduces) {
                softmax_tile(problem.op, tile_in, kTileLanes, classes, lanes, problem.output + first, 0, true, prefetch);
            } else {
                softmax_tile(problem.op, tile_in, kTileLanes, classes, lanes, tile_out, kTileLanes, true, prefetch);
                if (stream_tiles) {
                    stream_from_tile(tile_out, classes, lanes, problem.output + first * classes, tile_in);
                } else {
                    transpose_from_tile(tile_out, classes, lanes, problem.output + first * classes,
                                        next_tile_rows(problem.output, first, classes, view.rows()));
                }
            }
        }
    };
    // Each thread's streaming stores are fenced once, after its last item (see the Note on streaming
    // stores, stream.h).
    for_each_item(plan.items, threads, item_softmax, [&] {
        if (stream || stream_tiles) stream_fence();
    });
}

}  // namespace

void register_softmax_kernels(KernelTable& table) {
    table.softmax_float = softmax_kernel<float>;
    table.softmax_double = softmax_kernel<double>;
}

}  // namespace FASTXENT_ISA
}  // namespace fastxent
