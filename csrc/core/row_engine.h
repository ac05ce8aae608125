// The per-row building blocks shared by the softmax and loss kernels: row statistics (max, sum of
// exponentials, weighted sums of logits) and the element-wise writers, in two shapes:
//   * along a contiguous row (vectorised along the classes), and
//   * across a tile of rows whose classes are `class_stride` apart and whose lanes are contiguous
//     (vectorised across rows): the class axis is not last, or it was transposed into a tile.
//
// Included only by the per-ISA kernel files; everything is in an anonymous namespace so that each
// instruction set compiles its own copy (see kernels.h). No STL containers or algorithms here.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels.h"
#include "math.h"

namespace fastxent {
namespace {

// The rows of one work item (see plan_work in kernels.h). rows: rows [first, last). columns: the
// tile of `lanes` positions from `lane0` along the inner axis of outer position `outer` (rows
// first..first + lanes). small_rows: rows [first, first + lanes).
struct ItemRows {
    std::int64_t first;
    std::int64_t last;
    std::int64_t outer;
    std::int64_t lane0;
    std::int64_t lanes;
};

inline ItemRows item_rows(const WorkPlan& plan, const ClassAxisView& view, std::int64_t item) {
    const std::int64_t rows = view.rows();
    ItemRows range{0, 0, 0, 0, 0};
    if (plan.strategy == Strategy::columns) {
        const std::int64_t tiles_per_outer = (view.inner + kTileLanes - 1) / kTileLanes;
        range.outer = item / tiles_per_outer;
        range.lane0 = (item % tiles_per_outer) * kTileLanes;
        range.lanes = view.inner - range.lane0 < kTileLanes ? view.inner - range.lane0 : kTileLanes;
        range.first = range.outer * view.inner + range.lane0;
    } else {
        const std::int64_t per_item = plan.strategy == Strategy::rows ? plan.rows_per_item : kTileLanes;
        range.first = item * per_item;
        range.lanes = rows - range.first < per_item ? rows - range.first : per_item;
    }
    range.last = range.first + range.lanes;
    return range;
}

// One chunk of a split row (kernels.h, kSplitClasses): work item `item` is chunk item % chunks of
// row item / chunks, classes [first, first + count).
struct SplitChunk {
    std::int64_t row;
    std::int64_t first;
    std::int64_t count;
};

inline SplitChunk split_chunk(std::int64_t item, std::int64_t chunks, std::int64_t classes) {
    const std::int64_t first = (item % chunks) * kSplitChunk;
    return SplitChunk{item / chunks, first, classes - first < kSplitChunk ? classes - first : kSplitChunk};
}

// The max of a split row from its chunks' maxima.
inline double split_row_max(const double* chunk_max, std::int64_t row, std::int64_t chunks) {
    const double* maxima = chunk_max + row * chunks;
    double max = maxima[0];
    for (std::int64_t c = 1; c < chunks; ++c) max = maxima[c] > max ? maxima[c] : max;
    return max;
}

// Note: a chunk's sum against its own max. The first phase of a split row takes each chunk's max
// and, while the chunk is in cache, its sum of exponentials shifted by that max (instead of a second
// read of the whole row once the row's max is known). The row's sum is then
// sum_k s_k * exp(m_k - max). A chunk with no value above -inf is shifted by 0 and scaled by 0, so
// that it adds 0, or NaN if it holds a NaN, as it would against the row's max.
template <typename T>
T chunk_shift(T chunk_max) {
    return chunk_max == -std::numeric_limits<T>::infinity() ? T(0) : chunk_max;
}

inline double split_row_sum(const double* chunk_max, const double* chunk_sum, std::int64_t row, std::int64_t chunks,
                            double max) {
    double sum = 0.0;
    for (std::int64_t c = 0; c < chunks; ++c) {
        const double m = chunk_max[row * chunks + c];
        const double scale = m == -std::numeric_limits<double>::infinity() ? 0.0 : exp_double(m - max);
        sum += chunk_sum[row * chunks + c] * scale;
    }
    return sum;
}

// exp(m_k - max - log_sum), the factor that turns the exponentials of a chunk whose max is m_k
// (chunk_max), taken against chunk_shift(m_k), into its probabilities (see the Note on a split row's
// stored exponentials in loss.cpp). A chunk with no value above -inf was shifted by 0 (chunk_shift):
// its terms are 0, and stay 0, unless the row's sum is NaN or its max is -inf (then NaN).
inline double chunk_factor(const RowStats& stats, double chunk_max) {
    constexpr double infinity = std::numeric_limits<double>::infinity();
    if (chunk_max == -infinity) {
        return stats.max == -infinity ? std::numeric_limits<double>::quiet_NaN() : 0.0 * exp_double(-stats.log_sum);
    }
    return exp_double((chunk_max - stats.max) - stats.log_sum);
}

// Independent accumulators per loop: two vector registers of the instruction set this file is
// compiled for (FASTXENT_VECTOR_BYTES, set by CMake), enough to hide the latency of the adds without
// spilling the exp's constants out of the registers; four for the max, whose loop body is one
// instruction. The summation order depends on the instruction set, never on the thread count.
#ifndef FASTXENT_VECTOR_BYTES
#define FASTXENT_VECTOR_BYTES 16
#endif
template <typename T>
constexpr int kAccumulators = 2 * FASTXENT_VECTOR_BYTES / static_cast<int>(sizeof(T));
template <typename T>
constexpr int kMaxAccumulators = 4 * FASTXENT_VECTOR_BYTES / static_cast<int>(sizeof(T));

// Note: block sums. The sum of exponentials runs in T within blocks of kSumBlock elements and the
// block sums are added in double. Inside a block each accumulator adds at most
// kSumBlock / kAccumulators (32 to 128) positive terms, so the float32 sum of exps stays accurate to
// a few ulp however long the row is, and the double total never loses the small blocks of a
// 256k-class row.
constexpr std::int64_t kSumBlock = 1024;

template <typename T>
T negative_infinity() {
    return -std::numeric_limits<T>::infinity();
}

// Pairwise sum of the accumulators, in a fixed order: acc[j] += acc[j + N / 2], then the first half
// likewise, down to acc[0].
//
// Note: folds unrolled. Each halving is its own instance, with a constant width, so that the fold is
// straight-line code. Written as one loop over the widths, GCC kept the widths in a counter and
// folded the accumulators through memory: each wide store reloaded in narrower parts, which waits
// for the store to complete. That was a fifth of the time of a 127100 x 33 loss (a row's fold per
// block of its sums), and about 15 ns of every row's fixed cost; unrolled, and the max folded by
// halves too, the loss of 127100 x 33 rows took 0.80 of the time, of 4096 x 1000 rows 0.955. The
// additions and their order are those of the loop, so are the results.
template <int W, typename T, int N>
FASTXENT_MATH void fold_halves(T (&acc)[N]) {
    if constexpr (W > 0) {
        for (int j = 0; j < W; ++j) acc[j] = acc[j] + acc[j + W];
        fold_halves<W / 2>(acc);
    }
}

template <typename T, int N>
FASTXENT_MATH T fold_sum(T (&acc)[N]) {
    fold_halves<N / 2>(acc);
    return acc[0];
}

// The largest of the accumulators, by halves as fold_sum (see the Note on folds unrolled). They hold
// no NaN (see the Note on NaN in the max), so any order gives the same largest value; only a +0
// against a -0 could come out either way, and a row's max of zero gives the same results with either
// sign (x - max, and max + log(sum), are the same for both).
template <int W, typename T, int N>
FASTXENT_MATH void fold_max_halves(T (&acc)[N]) {
    if constexpr (W > 0) {
        for (int j = 0; j < W; ++j) acc[j] = acc[j + W] > acc[j] ? acc[j + W] : acc[j];
        fold_max_halves<W / 2>(acc);
    }
}

template <typename T, int N>
FASTXENT_MATH T fold_max(T (&acc)[N]) {
    fold_max_halves<N / 2>(acc);
    return acc[0];
}

// The largest of the accumulators and the smallest of the indices that hold it, into acc[0] and
// index[0], by halves as fold_max (see the Note on the scoring pass's ends). Masks as integers, as
// in the pass itself.
template <int W, typename T, typename Index, int N>
FASTXENT_MATH void fold_max_index_halves(T (&acc)[N], Index (&index)[N]) {
    if constexpr (W > 0) {
        for (int j = 0; j < W; ++j) {
            const T a = acc[j];
            const T b = acc[j + W];
            // Each condition its own mask, combined bitwise: && and || are branches, mispredicted
            // on every other row.
            const Index greater = -static_cast<Index>(b > a);
            const Index tie = -static_cast<Index>(b == a);
            const Index earlier = -static_cast<Index>(index[j + W] < index[j]);
            const Index take = greater | (tie & earlier);
            acc[j] = b > a ? b : a;
            index[j] = (index[j] & ~take) | (index[j + W] & take);
        }
        fold_max_index_halves<W / 2>(acc, index);
    }
}

// Note: NaN in the max. The max ignores NaN (a NaN logit makes the sum of exponentials NaN, and so
// every result of the row, as in PyTorch); it must not be taken as the shift, or a row of NaN and
// finite values would subtract NaN from -inf masks and lose the distinction in logsumexp.
template <typename T>
T row_max(const T* x, std::int64_t n) {
    constexpr int L = kMaxAccumulators<T>;
    T acc[L];
    for (int j = 0; j < L; ++j) acc[j] = negative_infinity<T>();
    std::int64_t i = 0;
    for (; i + L <= n; i += L) {
        for (int j = 0; j < L; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    }
    if (i < n && i > 0) {
        // The last L values, some of them again: taking a value twice leaves a max unchanged, and
        // one vector block is much faster than up to L - 1 dependent scalar steps.
        const T* last = x + n - L;
        for (int j = 0; j < L; ++j) acc[j] = last[j] > acc[j] ? last[j] : acc[j];
    } else {
        for (; i < n; ++i) acc[0] = x[i] > acc[0] ? x[i] : acc[0];
    }
    return fold_max(acc);
}

// Note: prefetching the next row. A row's first pass (the max) reads it from memory and is bound by
// the read; the pass of exponentials that follows reads it from cache and is bound by the arithmetic,
// leaving the memory idle. So the exponentials' pass asks for the next row as it goes (`next`, the
// next row of the same length, or null), and the next row's first pass then finds it in cache:
// measured with AVX2 on one thread, max + sum of exponentials over 2048 x 32000 floats takes 25 ms
// instead of 37, and over 4096 x 1000 (in L3) 1.7 instead of 2.1. The prefetches are issued for a
// part of kPrefetchPart elements before its exponentials, outside the vectorised loop: a prefetch
// inside it leaves the SSE2 loop scalar.
constexpr std::int64_t kPrefetchPart = 256;

// Elements [first, last) of `next`, a cache line at a time: for reading into every level (the
// defaults), or with __builtin_prefetch's `write` and `locality` (see the Note on prefetching a
// tile's result rows).
template <int write = 0, int locality = 3, typename T>
inline void prefetch_range(const T* next, std::int64_t first, std::int64_t last) {
#if defined(__GNUC__)
    constexpr std::int64_t per_line = 64 / static_cast<std::int64_t>(sizeof(T));
    for (std::int64_t k = first; k < last; k += per_line) __builtin_prefetch(next + k, write, locality);
#else
    (void)next;
    (void)first;
    (void)last;
#endif
}

// The next row to prefetch, as stored: its elements may be narrower than those computed on (a 16-bit
// row read through a staging buffer), so it is kept as bytes and an element size. Null for none.
struct NextRow {
    const char* data = nullptr;
    std::int64_t element_size = 0;

    NextRow() = default;
    NextRow(std::nullptr_t) {}
    template <typename E>
    NextRow(const E* row)
        : data(reinterpret_cast<const char*>(row)), element_size(static_cast<std::int64_t>(sizeof(E))) {}
    NextRow(const void* row, std::int64_t size) : data(static_cast<const char*>(row)), element_size(size) {}

    explicit operator bool() const { return data != nullptr; }
};

// The row after `row` of the logits (a Logits, staging.h) as stored, to prefetch: none after the
// last row, or when not `wanted`.
template <typename L>
NextRow next_row(const L& logits, const ClassAxisView& view, std::int64_t row, bool wanted = true) {
    if (!wanted || row + 1 >= view.rows()) return NextRow();
    return NextRow(logits.stored(view.row_offset(row + 1)), logits.stored_size());
}

// The chunk after work item `item` of a split view (see split_chunk), as stored; none after the last.
template <typename L>
NextRow next_chunk(const L& logits, const ClassAxisView& view, std::int64_t item, std::int64_t items,
                   std::int64_t chunks) {
    if (item + 1 >= items) return NextRow();
    const SplitChunk next = split_chunk(item + 1, chunks, view.classes);
    return NextRow(logits.stored(view.row_offset(next.row) + next.first), logits.stored_size());
}

// Elements [first, last) of the next row.
inline void prefetch_range(const NextRow& next, std::int64_t first, std::int64_t last) {
    prefetch_range(next.data, first * next.element_size, last * next.element_size);
}

// The groups of L elements of [start, stop), in order: body(i) for each group's first element i,
// the parts of kPrefetchPart elements of the next row prefetched as they come (see the Note above;
// the prefetches stay outside the vectorised loop). Returns the first element not in a whole group.
template <int L, typename Body>
std::int64_t for_each_group(std::int64_t start, std::int64_t stop, NextRow next, Body body) {
    static_assert(kPrefetchPart % L == 0, "whole groups per part: a sum's order is kept");
    std::int64_t i = start;
    for (std::int64_t part = start; part < stop; part += kPrefetchPart) {
        const std::int64_t part_stop = stop - part < kPrefetchPart ? stop : part + kPrefetchPart;
        if (next) prefetch_range(next, part, part_stop);
        for (; i + L <= part_stop; i += L) body(i);
    }
    return i;
}

// Which exponentials a sum adds: exp_in_sum's (a loss, a logsumexp), or fast_exp's, those a gradient
// is written with (see the Note on the gradient's exponentials below), and then whether they are also
// stored.
enum class SumTerms { in_sum, written, written_and_stored };

// sum_i exp(x_i - shift), blocked as described above, with the given terms (stored into out[i] for
// written_and_stored; out may be x itself); prefetching `next` (see the Note above).
//
// Note: the loop of stored exponentials. Since out may be x itself, GCC vectorised each group of the
// stored terms on its own, behind a test of the distance between out and x with a scalar path
// beside it: the accumulators then went through memory and the polynomial's constants were loaded
// again for every group. The group's iterations are independent (each reads its element before it
// writes it, and adds to its own accumulator), which `omp simd` states, and the loop is then an
// ordinary vector loop with its accumulators in registers. The same operations in the same order,
// so the same results. Measured against the previous build, paired in one process: the gradient of
// 4096 x 1000 float32 rows in 0.82 of the time (one and two threads), 2048 x 32000 and 256 x 128256
// in 0.85, softmax of 4096 x 1000 in 0.82; float64 and SSE2 in 0.73-0.83. A tile's loop over its lanes
// (tile_sum_exp_lanes) is written the same way: the gradient of 1048576 x 10 and x 4 in 0.97-0.98.
//
// Note: a row's last elements. The elements after the last whole group, when they fill more than half
// a group, go as one more group: the last L elements of the block, the ones already summed masked
// out (+0 added, which leaves an accumulator as it was) and only the new ones stored. One at a time,
// each a scalar exponential into the first accumulator, 15 of them made a row of 111 float32 classes
// cost more than one of 112. Measured against that, paired in one process, one thread: the loss of
// 32768 x 111 in 0.82 of the time, 32768 x 105 in 0.90; its gradient 0.89 and 0.97, softmax 0.87,
// log_softmax of 105 classes 0.91. A few last elements stay one at a time: as a group, 4 of them
// (100 classes) took 1.01-1.04 of the time. Their terms go to other accumulators than before, so
// the sums may differ from the previous ones in the last bit; loss and gradient still sum the same
// terms in the same order, so the loss class's backward still gives the fused gradient's bits.
template <typename T, SumTerms terms>
double row_sum_terms(const T* x, T* out, std::int64_t n, T shift, NextRow next) {
    constexpr int L = kAccumulators<T>;
    double total = 0.0;
    for (std::int64_t start = 0; start < n; start += kSumBlock) {
        const std::int64_t stop = n - start < kSumBlock ? n : start + kSumBlock;
        T acc[L];
        for (int j = 0; j < L; ++j) acc[j] = T(0);
        std::int64_t i = for_each_group<L>(start, stop, next, [&](std::int64_t first) {
            if constexpr (terms == SumTerms::written_and_stored) {
                // See the Note on the loop of stored exponentials.
#pragma omp simd
                for (int j = 0; j < L; ++j) {
                    const T e = fast_exp(x[first + j], shift);
                    out[first + j] = e;
                    acc[j] += e;
                }
            } else {
                for (int j = 0; j < L; ++j) {
                    if constexpr (terms == SumTerms::in_sum) {
                        acc[j] += exp_in_sum(x[first + j], shift);
                    } else {
                        acc[j] += fast_exp(x[first + j], shift);
                    }
                }
            }
        });
        if (stop - i > L / 2 && stop - start >= L) {
            // See the Note on a row's last elements (out may be x: its lanes below `skip` may hold
            // terms already, and are neither summed nor stored again).
            const T* last = x + stop - L;
            const int skip = static_cast<int>(L - (stop - i));
            T e[L];
            for (int j = 0; j < L; ++j) {
                if constexpr (terms == SumTerms::in_sum) {
                    e[j] = exp_in_sum(last[j], shift);
                } else {
                    e[j] = fast_exp(last[j], shift);
                }
                acc[j] += j >= skip ? e[j] : T(0);
            }
            if constexpr (terms == SumTerms::written_and_stored) {
                for (int j = skip; j < L; ++j) out[stop - L + j] = e[j];
            }
            i = stop;
        }
        for (; i < stop; ++i) {
            if constexpr (terms == SumTerms::in_sum) {
                acc[0] += exp_in_sum(x[i], shift);
            } else {
                const T e = fast_exp(x[i], shift);
                if constexpr (terms == SumTerms::written_and_stored) out[i] = e;
                acc[0] += e;
            }
        }
        total += static_cast<double>(fold_sum(acc));
    }
    return total;
}

template <typename T>
double row_sum_exp(const T* x, std::int64_t n, T shift, NextRow next = {}) {
    return row_sum_terms<T, SumTerms::in_sum>(x, nullptr, n, shift, next);
}

// Note: a weight at the max. The weighted sums below, S = sum_c u_c (x_c - max), leave each class's
// u_c log(sum) to the row's U log(sum) (see loss.cpp), so their term at the max is u_c * 0: NaN for
// an infinite class weight, where PyTorch's u_c * log_softmax_c is -inf (log_softmax_c = -log(sum)
// < 0) and the row's loss +inf. So where a class weight is infinite, a term whose difference is 0
// adds 0 whatever u_c: U, which holds u_c, still makes the loss inf (NaN where log(sum) is 0, as
// PyTorch's inf * 0). The select costs two instructions an element (the weighted sums of 4096 x 1000
// rows took 1.1-1.2 times as long with it everywhere), so it is only taken for an infinite weight:
// per class in the tiles, per call (kGuard) along a row. A finite u_c gives the same sums either way
// (u_c * 0 is +-0, and only the sign of a zero S could differ). Probability targets of inf are not
// guarded: their rows are NaN where PyTorch's may be inf.
template <bool kGuard>
FASTXENT_MATH double weighted_difference(double u, double difference) {
    if constexpr (kGuard) {
        return difference == 0.0 ? 0.0 : u * difference;
    } else {
        return u * difference;
    }
}

// sum_i u_i * (x_i - shift) in double, with u_i = weight_i (or 1 when weight is null); kGuard as
// weighted_difference's.
template <bool kGuard, typename T>
double row_weighted_sum_of(const T* x, const T* weight, std::int64_t n, T shift) {
    constexpr int L = kAccumulators<T>;
    double acc[L];
    for (int j = 0; j < L; ++j) acc[j] = 0.0;
    std::int64_t i = 0;
    if (weight == nullptr) {
        for (; i + L <= n; i += L) {
            for (int j = 0; j < L; ++j) acc[j] += static_cast<double>(x[i + j] - shift);
        }
        for (; i < n; ++i) acc[0] += static_cast<double>(x[i] - shift);
    } else {
        for (; i + L <= n; i += L) {
            for (int j = 0; j < L; ++j) {
                const double difference = static_cast<double>(x[i + j] - shift);
                acc[j] += weighted_difference<kGuard>(static_cast<double>(weight[i + j]), difference);
            }
        }
        for (; i < n; ++i) {
            acc[0] += weighted_difference<kGuard>(static_cast<double>(weight[i]), static_cast<double>(x[i] - shift));
        }
    }
    return fold_sum(acc);
}

// row_weighted_sum_of, guarded where some class weight is infinite (see the Note above).
template <typename T>
double row_weighted_sum(const T* x, const T* weight, std::int64_t n, T shift, bool infinite_weight) {
    return infinite_weight ? row_weighted_sum_of<true>(x, weight, n, shift)
                           : row_weighted_sum_of<false>(x, weight, n, shift);
}

// The smoothed probability target times the class weight: u_c = w_c * ((1 - e) * y_c + e / C).
template <typename T>
struct ProbabilityWeights {
    T keep;        // 1 - e
    T uniform;     // e / C
    const T* weight;
    bool infinite_weight;  // some w_c is infinite (see the Note on a weight at the max)
    T at(const T* y, std::int64_t c) const {
        const T smoothed = keep * y[c] + uniform;
        return weight == nullptr ? smoothed : weight[c] * smoothed;
    }
};

// For probability targets: sum_c u_c * (x_c - shift) and sum_c u_c, both in double.
template <bool kGuard, typename T>
void row_probability_sums_of(const T* x, const T* y, const ProbabilityWeights<T>& u, std::int64_t n,
                             T shift, double& dot, double& total) {
    constexpr int L = kAccumulators<T>;
    double dot_acc[L];
    double total_acc[L];
    for (int j = 0; j < L; ++j) dot_acc[j] = total_acc[j] = 0.0;
    std::int64_t i = 0;
    for (; i + L <= n; i += L) {
        for (int j = 0; j < L; ++j) {
            const T weight_j = u.at(y, i + j);
            const double difference = static_cast<double>(x[i + j] - shift);
            dot_acc[j] += weighted_difference<kGuard>(static_cast<double>(weight_j), difference);
            total_acc[j] += static_cast<double>(weight_j);
        }
    }
    for (; i < n; ++i) {
        const T weight_i = u.at(y, i);
        dot_acc[0] += weighted_difference<kGuard>(static_cast<double>(weight_i), static_cast<double>(x[i] - shift));
        total_acc[0] += static_cast<double>(weight_i);
    }
    dot = fold_sum(dot_acc);
    total = fold_sum(total_acc);
}

template <typename T>
void row_probability_sums(const T* x, const T* y, const ProbabilityWeights<T>& u, std::int64_t n,
                          T shift, double& dot, double& total) {
    if (u.infinite_weight) {
        row_probability_sums_of<true>(x, y, u, n, shift, dot, total);
    } else {
        row_probability_sums_of<false>(x, y, u, n, shift, dot, total);
    }
}

// Whole rows whose logs are taken together (loss.cpp's plain_row_losses, softmax.cpp's
// softmax_rows): this many at a time, their maxima and sums first, then their logs in one
// vectorised pass (log_double) instead of a libm log per row.
constexpr std::int64_t kLogRows = 64;

// Row statistics of a contiguous row; prefetching `next`, the next row (or null).
template <typename T>
RowStats row_stats(const T* x, std::int64_t n, NextRow next = {}) {
    const T max = row_max(x, n);
    const double sum = row_sum_exp(x, n, max, next);
    return RowStats{static_cast<double>(max), std::log(sum)};
}

// ---------------------------------------------------------------------------------------------------
// Element-wise writers along a contiguous row.

template <typename T>
void write_log_softmax(const T* x, T* out, std::int64_t n, const RowStats& stats) {
    const T max = static_cast<T>(stats.max);
    const T log_sum = static_cast<T>(stats.log_sum);
    for (std::int64_t i = 0; i < n; ++i) out[i] = (x[i] - max) - log_sum;
}

// Note: softmax as exp(x - max) * (1 / sum): the reciprocal is rounded once, where exp((x - max) -
// log(sum)) would carry the rounding of log(sum) (up to |log(sum)| / 2 ulp) into every probability.
template <typename T>
T inverse_sum(const RowStats& stats) {
    return static_cast<T>(exp_double(-stats.log_sum));
}

// The softmax of a row from the exponentials that row_exps_into left in out.
template <typename T>
void scale_softmax(T* out, std::int64_t n, const RowStats& stats) {
    const T inverse = inverse_sum<T>(stats);
    for (std::int64_t i = 0; i < n; ++i) out[i] *= inverse;
}

// Note: a non-finite scale. Each gradient here is written as p * (a * scale) - u * scale, the scale
// applied to each term before they are subtracted, as PyTorch's autograd does (the gradient of the
// log-softmax, scaled, minus p times its sum). With an infinite grad_output the two terms are then
// infinities that give NaN where PyTorch's do, and p = 0 or u = 0 times infinity gives NaN where
// PyTorch's 0 * inf does, instead of one infinity per element. With a finite scale the two forms
// differ only in rounding. The target's own term is LossContext::target_grad's (loss.cpp).

// grad_i = scale * (p_i * a - b * w_i): the index-target gradient without its target term, with
// p_i = e(i) / sum, e(i) = exp(x_i - max) (computed here, or already in grad: scale_index_grad). See
// the Note on a non-finite scale.
template <typename T, typename Exp>
void index_grad_from(Exp e, const T* weight, T* grad, std::int64_t n, T inverse, T a, T b, T scale) {
    const T coefficient = a * inverse * scale;
    const T b_scale = b * scale;
    if (b == T(0)) {
        for (std::int64_t i = 0; i < n; ++i) grad[i] = e(i) * coefficient;
    } else if (weight == nullptr) {
        for (std::int64_t i = 0; i < n; ++i) grad[i] = e(i) * coefficient - b_scale;
    } else {
        for (std::int64_t i = 0; i < n; ++i) grad[i] = e(i) * coefficient - weight[i] * b_scale;
    }
}

template <typename T>
void write_index_grad(const T* x, const T* weight, T* grad, std::int64_t n, const RowStats& stats,
                      T a, T b, T scale) {
    const T max = static_cast<T>(stats.max);
    index_grad_from([x, max](std::int64_t i) { return fast_exp(x[i], max); }, weight, grad, n,
                    inverse_sum<T>(stats), a, b, scale);
}

// Note: the gradient's exponentials, computed once. A row's gradient needs e_i = exp(x_i - max) for
// the sum and again for p_i = e_i / sum. row_exps_into writes the e_i (fast_exp, as everything
// written out) into the gradient's row while it sums them (in T within blocks, as row_sum_exp), and
// scale_index_grad then turns them into the gradient in place: one exponential per element instead
// of two. `out` may be `x` itself (element i is read before it is written).
// With `out` null, only the sum (of the same terms, so that statistics saved for a later gradient
// agree with it to the last bit).
template <typename T>
double row_exps_into(const T* x, T* out, std::int64_t n, T shift, NextRow next) {
    if (out == nullptr) return row_sum_terms<T, SumTerms::written>(x, nullptr, n, shift, next);
    return row_sum_terms<T, SumTerms::written_and_stored>(x, out, n, shift, next);
}

// write_index_grad on the e_i that row_exps_into left in grad.
template <typename T>
void scale_index_grad(const T* weight, T* grad, std::int64_t n, T inverse, T a, T b, T scale) {
    index_grad_from([grad](std::int64_t i) { return grad[i]; }, weight, grad, n, inverse, a, b, scale);
}

// grad_i = scale * (p_i * U - u_i): the probability-target gradient (see the Note on a non-finite
// scale).
template <typename T>
void write_probability_grad(const T* x, const T* y, const ProbabilityWeights<T>& u, T* grad,
                            std::int64_t n, const RowStats& stats, T total, T scale) {
    const T max = static_cast<T>(stats.max);
    const T coefficient = total * inverse_sum<T>(stats) * scale;
    for (std::int64_t i = 0; i < n; ++i) grad[i] = fast_exp(x[i], max) * coefficient - u.at(y, i) * scale;
}

// ---------------------------------------------------------------------------------------------------
// Tiles of rows: lane l of class c is x[c * stride + l]. Statistics per lane, vectorised across lanes.

template <typename T>
struct TileStats {
    T max[kTileLanes];
    double sum[kTileLanes];      // sum_c exp(x_c - max)
    double log_sum[kTileLanes];
    double inverse[kTileLanes];  // 1 / sum, as exp(-log_sum) so that saved statistics give the same value

    RowStats row(std::int64_t l) const { return RowStats{static_cast<double>(max[l]), log_sum[l]}; }
};

// The per-lane reciprocals, vectorised (a libm call per row would dominate small C).
template <typename T>
void tile_inverse(std::int64_t lanes, TileStats<T>& tile) {
    for (std::int64_t l = 0; l < lanes; ++l) tile.inverse[l] = exp_double(-tile.log_sum[l]);
}

// Note: tile sums. Per lane, sum_c exp(x_c - max) is added in T over blocks of kTileSumBlock classes
// and the block sums in double: each T accumulator takes at most 64 terms, as one of row_sum_exp's
// does with AVX2 (1024 / 16), so the error is as small. The lanes go kAccumulators<T> at a time (two
// vectors), their accumulators and maxima held in registers across the classes; a lane's sum never
// depends on the other lanes (nor on where the tile was cut).
constexpr std::int64_t kTileSumBlock = 64;

// Where the next tile of a kernel's loop lies in memory, prefetched during this tile's sums (see the
// Note on prefetching the next row): class c of lane block b (kAccumulators<T> lanes) at
// next + c * class_step + b * block_step. `next` is null for none.
template <typename T>
struct TilePrefetch {
    const T* next = nullptr;
    std::int64_t class_step = 0;
    std::int64_t block_step = 0;
    std::int64_t blocks = 0;  // whole lane blocks of the next tile: nothing past them is asked for
};

// The tile after work item `item` of `plan` over `input`, if it is read in place: the next tile of
// lanes (columns), or the next kTileLanes rows when they are contiguous (small_rows).
template <typename T>
TilePrefetch<T> next_tile(const T* input, const WorkPlan& plan, const ClassAxisView& view, std::int64_t item) {
    constexpr int B = kAccumulators<T>;
    TilePrefetch<T> prefetch;
    if (item + 1 >= plan.items) return prefetch;
    const ItemRows next = item_rows(plan, view, item + 1);
    if (plan.strategy == Strategy::columns) {
        prefetch = TilePrefetch<T>{input + view.row_offset(next.outer) + next.lane0, view.class_stride, B,
                                   next.lanes / B};
    } else if (plan.strategy == Strategy::small_rows && view.outer_stride == view.classes) {
        // Block b is rows b * B .. (b + 1) * B - 1 of the next tile, contiguous.
        prefetch = TilePrefetch<T>{input + view.row_offset(next.first), B, view.classes * B, next.lanes / B};
    }
    return prefetch;
}

// Note: prefetching a tile's result rows. A small_rows tile's gradient (or softmax, log_softmax) is
// made in the tile and then transposed into the result's rows (transpose_from_tile). Each of those
// stores needs its cache line first; when the result is larger than the caches can keep beside the
// logits, the line comes from memory and the store waits: the gradient of 65536 x 50 float32 rows
// took 1.4 times as long as the same call made in place (the gradient written over the logits,
// whose lines the tile has just read), of 16384 x 50 1.03-1.06 times. So while a tile's rows are
// written, the rows of the next tile are asked for (into L2, for writing), a block of rows at a
// time: by the time that tile is written, its lines are there. Measured against the previous build,
// paired in one process, two threads (float32): gradient of 65536 x 50 in 0.93-0.96 of the time,
// 65536 x 64 0.94, 1048576 x 10 0.96-0.97; softmax of 65536 x 50 0.88-0.91; log_softmax of
// 65536 x 50 0.89, 1048576 x 10 0.93-0.95, 262144 x 20 0.89-0.92; one thread 0.90-0.98. Below
// kPrefetchResultBytes the prefetches were a cost (16384 x 50, 3.3 MB: 1.01-1.08; 4096 x 50 and
// 8192 x 10, in L2: 1.03-1.05), so smaller results go without them.
constexpr std::int64_t kPrefetchResultBytes = std::int64_t{8} << 20;

// The rows of the tile after the one whose first row is `first`, in a C-contiguous result of `rows`
// rows of `classes` (a small_rows plan's gradient or softmax), to prefetch while this tile's rows are
// written (see the Note above); null when that tile is not a whole one, or the result is small.
template <typename T>
const T* next_tile_rows(const T* result, std::int64_t first, std::int64_t classes, std::int64_t rows) {
    if (rows * classes * static_cast<std::int64_t>(sizeof(T)) < kPrefetchResultBytes) return nullptr;
    const std::int64_t next = first + kTileLanes;
    return next + kTileLanes <= rows ? result + next * classes : nullptr;
}

// `prefetch`: class c of the lanes to prefetch at prefetch + c * prefetch_step, or null; asked for
// before each block's exponentials: a prefetch among them leaves the SSE2 loop scalar. The terms are
// exp_in_sum's, or fast_exp's (SumTerms), stored at out[c * out_stride + j] for written_and_stored
// (out may be x itself, with out_stride == stride: each element is read before it is written).
template <typename T, int B, SumTerms terms>
void tile_sum_exp_lanes(const T* x, std::int64_t stride, T* out, std::int64_t out_stride, std::int64_t classes,
                        const T* max, double* sum, const T* prefetch, std::int64_t prefetch_step) {
    T shift[B];
    double total[B];
    for (int j = 0; j < B; ++j) {
        shift[j] = max[j];
        total[j] = 0.0;
    }
    for (std::int64_t start = 0; start < classes; start += kTileSumBlock) {
        const std::int64_t stop = classes - start < kTileSumBlock ? classes : start + kTileSumBlock;
        if (prefetch != nullptr) {
            for (std::int64_t c = start; c < stop; ++c) prefetch_range(prefetch + c * prefetch_step, 0, B);
        }
        T acc[B];
        for (int j = 0; j < B; ++j) acc[j] = T(0);
        for (std::int64_t c = start; c < stop; ++c) {
            const T* row = x + c * stride;
            if constexpr (terms == SumTerms::in_sum) {
                for (int j = 0; j < B; ++j) acc[j] += exp_in_sum(row[j], shift[j]);
            } else {
                // See the Note on the loop of stored exponentials.
                T* out_row = terms == SumTerms::written_and_stored ? out + c * out_stride : nullptr;
#pragma omp simd
                for (int j = 0; j < B; ++j) {
                    const T e = fast_exp(row[j], shift[j]);
                    if constexpr (terms == SumTerms::written_and_stored) out_row[j] = e;
                    acc[j] += e;
                }
            }
        }
        for (int j = 0; j < B; ++j) total[j] += static_cast<double>(acc[j]);
    }
    for (int j = 0; j < B; ++j) sum[j] = total[j];
}

// sum[l] = sum_c exp(x[c * stride + l] - max[l]) for l < lanes (see the Note above), with the given
// terms (stored into out[c * out_stride + l] for written_and_stored).
template <typename T, SumTerms terms = SumTerms::in_sum>
void tile_sum_exp(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes, const T* max,
                  double* sum, const TilePrefetch<T>& prefetch, T* out = nullptr, std::int64_t out_stride = 0) {
    constexpr int B = kAccumulators<T>;
    std::int64_t l = 0;
    for (std::int64_t block = 0; l + B <= lanes; l += B, ++block) {
        const T* next = block < prefetch.blocks ? prefetch.next + block * prefetch.block_step : nullptr;
        tile_sum_exp_lanes<T, B, terms>(x + l, stride, out == nullptr ? nullptr : out + l, out_stride, classes,
                                        max + l, sum + l, next, prefetch.class_step);
    }
    for (; l < lanes; ++l) {
        tile_sum_exp_lanes<T, 1, terms>(x + l, stride, out == nullptr ? nullptr : out + l, out_stride, classes,
                                        max + l, sum + l, nullptr, 0);
    }
}

// Note: register blocks of a tile's max. The per-lane passes that need no exponential (the max, and
// with it the target logit of index targets) go kMaxAccumulators<T> lanes at a time, their running
// values held in registers across the classes, as the sums do: one load and one max per class and
// vector, instead of a load and a store of the running max as well when every class sweeps all the
// lanes. Each lane's max is the same as the sweep's (the same comparisons in the same order).
// The loops over a block's lanes are marked `omp simd` (honoured without the OpenMP runtime, by
// -fopenmp-simd): left to GCC's straight-line vectoriser, the selects of the max stayed scalar with
// SSE2 and for doubles.
// With kCopy (tile_max_copy), each value is also stored into copy[c * kTileLanes + j].
template <typename T, int B, bool kCopy = false>
void tile_max_lanes(const T* x, std::int64_t stride, std::int64_t classes, T* max, T* copy = nullptr) {
    T m[B];
#pragma omp simd
    for (int j = 0; j < B; ++j) m[j] = negative_infinity<T>();
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* row = x + c * stride;
#pragma omp simd
        for (int j = 0; j < B; ++j) {
            const T value = row[j];
            if constexpr (kCopy) copy[c * kTileLanes + j] = value;
            m[j] = value > m[j] ? value : m[j];
        }
    }
#pragma omp simd
    for (int j = 0; j < B; ++j) max[j] = m[j];
}

// Per-lane max. In register blocks (see the Note above) for a tile in a buffer of its own (classes
// kTileLanes apart: transposed rows, or a staged tile), which is in cache. A tile read in place along
// an inner axis comes from memory, each class a whole inner extent apart: there the sweep of each
// class's lanes in turn, which reads memory in runs of kTileLanes elements, measured 4-7% faster.
template <typename T>
void tile_max(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes, T* max) {
    if (stride != kTileLanes) {
        for (std::int64_t l = 0; l < lanes; ++l) max[l] = negative_infinity<T>();
        for (std::int64_t c = 0; c < classes; ++c) {
            const T* row = x + c * stride;
            for (std::int64_t l = 0; l < lanes; ++l) max[l] = row[l] > max[l] ? row[l] : max[l];
        }
        return;
    }
    constexpr int B = kMaxAccumulators<T>;
    std::int64_t l = 0;
    for (; l + B <= lanes; l += B) tile_max_lanes<T, B>(x + l, stride, classes, max + l);
    for (; l < lanes; ++l) tile_max_lanes<T, 1>(x + l, stride, classes, max + l);
}

// Note: copies of a tile along an inner axis. A tile read in place along an inner axis (columns)
// has its classes a whole inner extent apart. Where that extent is a multiple of 4096 bytes (H x W
// of 32 x 32, 64 x 64, 128 x 128, 224 x 224 ...), every class of a lane falls into the same set of
// the level-1 cache, and of the level-2 cache too from 65536 bytes: with more classes than a set
// has ways (8 to 12 on current x86 cores), a tile cannot stay in cache between its passes, and each
// pass after the first reads it again from further out. Such a tile is copied by its max pass into
// a buffer of the kernel's own (classes kTileLanes apart), and the later passes read the copy: the
// same values, so the same results. Measured against reading in place, in the same process: on
// 16 x 21 x 128 x 128 float32 logits the loss in 0.85-0.89 of the time (one and two threads), the
// loss with its gradient in 0.92-0.97, log_softmax in 0.87-0.97 and softmax in 0.95-1.01; on
// 64 x 32 x 4096 the loss in 0.84-0.90. The gradient of 1048576 x 10 and 1048576 x 4 rows, whose
// code this leaves as it was, measured 3-8% slower in the same comparisons, and 1.00 with the
// copied tiles' call compiled out: the placement of the kernels' code, which no change here was
// found to avoid. Only for whole tiles (the last lanes of a partial tile would go one at a time
// through the copying max: up to 1.3x slower on 20000 x 5 x 50) and kCopyMinClasses or more classes
// (with 3, on 4 x 3 x 262144, the copy cost 3.5%); extents that are no such multiple
// (16 x 21 x 100 x 100) gained nothing from it.
constexpr std::int64_t kCopyMinClasses = 8;
constexpr std::int64_t kCacheAliasBytes = 4096;

// Whether a tile of `lanes` lanes, class c at x[c * stride + l], is copied (see the Note above).
template <typename T>
bool copies_tile(std::int64_t stride, std::int64_t classes, std::int64_t lanes) {
    return stride != kTileLanes && lanes == kTileLanes && classes >= kCopyMinClasses && classes <= kSmallClasses &&
           (stride * static_cast<std::int64_t>(sizeof(T))) % kCacheAliasBytes == 0;
}

// tile_max of a tile that copies_tile, in register blocks, copying it into `copy` (classes kTileLanes
// apart) as it goes.
template <typename T>
void tile_max_copy(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes, T* max, T* copy) {
    constexpr int B = kMaxAccumulators<T>;
    std::int64_t l = 0;
    for (; l + B <= lanes; l += B) tile_max_lanes<T, B, true>(x + l, stride, classes, max + l, copy + l);
    for (; l < lanes; ++l) tile_max_lanes<T, 1, true>(x + l, stride, classes, max + l, copy + l);
}

// Per-lane sum of exponentials against tile.max, with the given terms (see tile_sum_exp), and its log
// (0 instead, without `with_log`: see kept_log_sum); the reciprocal too when `with_inverse`;
// prefetching the next tile.
template <typename T, SumTerms terms = SumTerms::in_sum>
void tile_sums(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes, bool with_inverse,
               TileStats<T>& tile, const TilePrefetch<T>& prefetch, bool with_log, T* out = nullptr,
               std::int64_t out_stride = 0) {
    tile_sum_exp<T, terms>(x, stride, classes, lanes, tile.max, tile.sum, prefetch, out, out_stride);
    if (with_log) {
        for (std::int64_t l = 0; l < lanes; ++l) tile.log_sum[l] = log_double(tile.sum[l]);
    } else {
        for (std::int64_t l = 0; l < lanes; ++l) tile.log_sum[l] = 0.0;
    }
    if (with_inverse) tile_inverse(lanes, tile);
}

// Note: logs of a tile as one log of products. A loss reduced over the rows, whose rows each add
// their log(sum) once (no class weights, no z-loss), needs only the sum of those logs:
// sum_l log(s_l) = log(prod_l s_l). Each of kAccumulators<double> products takes every that-many-th
// kept lane, and one log per product replaces one per row: on 1048576 x 2 logits the per-row logs
// were a fifth of the loss's time. A sum of exponentials lies in [1, C] (its largest term is 1), so a
// product of at most 35 of them stays finite for C <= 2^24 (the caller's condition, kMaxProductClasses);
// its rounding (35 roundings of 2^-53) is far below that of the logs it replaces. A NaN sum makes the
// result NaN, as its log would have.
constexpr std::int64_t kMaxProductClasses = std::int64_t{1} << 24;

// sum_l log(factor[l]), as logs of products (factor 1 for a row left out).
inline double log_of_products(const double* factor, std::int64_t lanes) {
    constexpr int L = kAccumulators<double>;
    double product[L];
    for (int j = 0; j < L; ++j) product[j] = 1.0;
    std::int64_t i = 0;
    for (; i + L <= lanes; i += L) {
        for (int j = 0; j < L; ++j) product[j] *= factor[i + j];
    }
    for (; i < lanes; ++i) product[0] *= factor[i];
    double logs[L];
    for (int j = 0; j < L; ++j) logs[j] = log_double(product[j]);
    return fold_sum(logs);
}

inline double kept_log_sum(const double* sum, const double* kept, std::int64_t lanes) {
    // The factors first: a select inside the products' loop becomes a branch per lane.
    double factor[kTileLanes];
    for (std::int64_t l = 0; l < lanes; ++l) factor[l] = kept[l] != 0.0 ? sum[l] : 1.0;
    return log_of_products(factor, lanes);
}

// A two-class row's sum of exponentials against its max, the larger of the two (see the Note on two
// classes in loss.cpp): the max's own term is exactly 1, so the sum is 1 + exp(d) with
// d = (first - max) + (second - max), the other logit minus the max, taken as the tiles' term
// exp_in_sum(other, max) (its shift max * 0 is 0, or NaN, with no clamp, for an infinite max).
// Forced inline: called out of line, it left the loops of the two-class tiles scalar.
template <typename T>
FASTXENT_MATH T two_class_sum(T first, T second, T max) {
    const T d = (first - max) + (second - max);
    return T(1) + exp_in_sum(d, max * T(0));
}

template <typename T>
void load_tile_stats(const RowStats* saved, std::int64_t lanes, TileStats<T>& tile) {
    for (std::int64_t l = 0; l < lanes; ++l) {
        tile.max[l] = static_cast<T>(saved[l].max);
        tile.log_sum[l] = saved[l].log_sum;
    }
    tile_inverse(lanes, tile);
}

// The sum of `n` values in a fixed order that vectorises: kAccumulators interleaved partial sums,
// then pairwise. (A plain running sum is one dependent add per value.)
inline double ordered_sum(const double* values, std::int64_t n) {
    constexpr int L = kAccumulators<double>;
    double acc[L];
    for (int j = 0; j < L; ++j) acc[j] = 0.0;
    std::int64_t i = 0;
    for (; i + L <= n; i += L) {
        for (int j = 0; j < L; ++j) acc[j] += values[i + j];
    }
    for (; i < n; ++i) acc[0] += values[i];
    return fold_sum(acc);
}

// The position of the first invalid target of a run (one that is neither in [0, classes) nor
// ignore_index), or -1 for none.
inline std::int64_t first_invalid_target(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                                         std::int64_t ignore_index) {
    for (std::int64_t i = 0; i < count; ++i) {
        const std::int64_t t = target[i];
        if ((t < 0 || t >= classes) && t != ignore_index) return i;
    }
    return -1;
}

// The check of a run of index targets (TargetCheck; its first invalid one relative to `target`):
// counts without branches, so that the loop vectorises; the position of the first invalid target is
// searched for only in a run that has one. Blocks of check_targets (target_check.cpp) and the tiles
// of a loss that checks its own targets (CrossEntropyProblem::target_checks).
inline TargetCheck check_target_block(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                                      std::int64_t ignore_index) {
    const std::uint64_t limit = static_cast<std::uint64_t>(classes);
    std::int64_t invalid = 0;
    std::int64_t kept = 0;
    for (std::int64_t i = 0; i < count; ++i) {
        const std::int64_t t = target[i];
        const std::int64_t keep = t != ignore_index;
        kept += keep;
        invalid += keep & static_cast<std::int64_t>(static_cast<std::uint64_t>(t) >= limit);
    }
    return TargetCheck{invalid > 0 ? first_invalid_target(target, count, classes, ignore_index) : -1, kept};
}

// Note: index targets of a tile. A tile's targets are first read into class numbers:
// target_class[l] is lane l's target, or -1 when it is ignore_index or outside [0, classes), so that
// nothing is ever read through an invalid target, even one the caller has not checked (see
// CrossEntropyProblem::target_checks); kept[l] is 1, or 0 for ignore_index. The target logits are
// then gathered, for up to kSmallClasses classes, as one select per class and lane, which
// vectorises (a scalar gather per lane is left for more classes). On 1048576 x 10 logits the scalar
// gather and the separate pass of the check took a fifth of the loss's time; reading the targets
// here, the tile mostly waits for them instead, and the loss gained 0-9% on this machine (one read
// of the targets less matters more where memory is shared by more cores).
// The class numbers are int64, or int32 for up to kSmallClasses classes (see
// tile_max_and_target_logits).
// With `check` not null, the same pass over the targets also takes their check_target_block into it:
// the loss of 1048576 x 10 and x 4 rows (few_class_tile) in 0.98-0.99 of the time of a separate
// pass of the check, paired in one process; loss_tile's 50-class rows measured 1.02, and keep it.
template <typename I>
void tile_target_classes(const std::int64_t* targets, std::int64_t lanes, std::int64_t classes,
                         std::int64_t ignore_index, I* target_class, double* kept, TargetCheck* check = nullptr) {
    const std::uint64_t limit = static_cast<std::uint64_t>(classes);
    std::int64_t invalid = 0;
    std::int64_t kept_count = 0;
    for (std::int64_t l = 0; l < lanes; ++l) {
        const std::int64_t t = targets[l];
        const std::int64_t keep = t != ignore_index;
        const std::int64_t in_range = static_cast<std::uint64_t>(t) < limit;
        target_class[l] = static_cast<I>(keep & in_range ? t : -1);
        kept[l] = keep != 0 ? 1.0 : 0.0;
        kept_count += keep;
        invalid += keep & (in_range ^ 1);
    }
    if (check != nullptr) {
        *check = TargetCheck{invalid > 0 ? first_invalid_target(targets, lanes, classes, ignore_index) : -1,
                             kept_count};
    }
}

// target_logit[l] = x[target_class[l] * stride + l], or 0 where target_class[l] is -1.
template <typename T>
void tile_target_logits(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes,
                        const std::int64_t* target_class, double* target_logit) {
    if (classes > kSmallClasses) {
        for (std::int64_t l = 0; l < lanes; ++l) {
            const std::int64_t t = target_class[l];
            target_logit[l] = t < 0 ? 0.0 : static_cast<double>(x[t * stride + l]);
        }
        return;
    }
    std::int32_t small_class[kTileLanes];
    T logit[kTileLanes];
    for (std::int64_t l = 0; l < lanes; ++l) {
        small_class[l] = static_cast<std::int32_t>(target_class[l]);
        logit[l] = T(0);
    }
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* row = x + c * stride;
        const std::int32_t cls = static_cast<std::int32_t>(c);
        for (std::int64_t l = 0; l < lanes; ++l) {
            const T value = row[l];
            logit[l] = small_class[l] == cls ? value : logit[l];
        }
    }
    for (std::int64_t l = 0; l < lanes; ++l) target_logit[l] = static_cast<double>(logit[l]);
}

// Per lane of a tile of at most kSmallClasses classes (class c of lane l at x[c * stride + l]), in one
// pass of register blocks (see the Note on register blocks of a tile's max): the max, as tile_max, and
// the target logit, as tile_target_logits (target_class[l], or -1 for none). Also on a tile read in
// place along an inner axis, where the max alone keeps its sweep: with the targets' pass left out,
// the loss of 16 x 21 x 128 x 128 logits measured 3-7% faster than with the sweep and that pass.
// With kCopy (tile_max_copy_and_target_logits), each value is also stored into copy[c * kTileLanes + j].
template <typename T, int B, bool kCopy = false>
void tile_max_target_lanes(const T* x, std::int64_t stride, std::int64_t classes, const std::int32_t* target_class,
                           T* max, T* logit, T* copy = nullptr) {
    T m[B];
    T t[B];
    std::int32_t k[B];
#pragma omp simd
    for (int j = 0; j < B; ++j) {
        m[j] = negative_infinity<T>();
        t[j] = T(0);
        k[j] = target_class[j];
    }
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* row = x + c * stride;
        const std::int32_t cls = static_cast<std::int32_t>(c);
#pragma omp simd
        for (int j = 0; j < B; ++j) {
            const T value = row[j];
            if constexpr (kCopy) copy[c * kTileLanes + j] = value;
            m[j] = value > m[j] ? value : m[j];
            t[j] = k[j] == cls ? value : t[j];
        }
    }
#pragma omp simd
    for (int j = 0; j < B; ++j) {
        max[j] = m[j];
        logit[j] = t[j];
    }
}

template <typename T>
void tile_max_and_target_logits(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes,
                                const std::int32_t* target_class, T* max, T* logit) {
    constexpr int B = kMaxAccumulators<T>;
    std::int64_t l = 0;
    for (; l + B <= lanes; l += B) {
        tile_max_target_lanes<T, B>(x + l, stride, classes, target_class + l, max + l, logit + l);
    }
    for (; l < lanes; ++l) tile_max_target_lanes<T, 1>(x + l, stride, classes, target_class + l, max + l, logit + l);
}

// tile_max_and_target_logits of a tile that copies_tile, copying it into `copy` as tile_max_copy.
template <typename T>
void tile_max_copy_and_target_logits(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes,
                                     const std::int32_t* target_class, T* max, T* logit, T* copy) {
    constexpr int B = kMaxAccumulators<T>;
    std::int64_t l = 0;
    for (; l + B <= lanes; l += B) {
        tile_max_target_lanes<T, B, true>(x + l, stride, classes, target_class + l, max + l, logit + l, copy + l);
    }
    for (; l < lanes; ++l) {
        tile_max_target_lanes<T, 1, true>(x + l, stride, classes, target_class + l, max + l, logit + l, copy + l);
    }
}

// Per lane: sum_c w_c * (x_c - max) in double.
template <typename T>
void tile_weighted_sum(const T* x, std::int64_t stride, const T* weight, std::int64_t classes,
                       std::int64_t lanes, const T* max, double* out) {
    for (std::int64_t l = 0; l < lanes; ++l) out[l] = 0.0;
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* row = x + c * stride;
        if (weight == nullptr) {
            for (std::int64_t l = 0; l < lanes; ++l) out[l] += static_cast<double>(row[l] - max[l]);
        } else if (const double w = static_cast<double>(weight[c]); std::isinf(w)) {
            for (std::int64_t l = 0; l < lanes; ++l) {
                out[l] += weighted_difference<true>(w, static_cast<double>(row[l] - max[l]));
            }
        } else {
            for (std::int64_t l = 0; l < lanes; ++l) out[l] += w * static_cast<double>(row[l] - max[l]);
        }
    }
}

// Per lane: sum_c u_c * (x_c - max) and sum_c u_c, with u from the probability target tile y.
template <typename T>
void tile_probability_sums(const T* x, std::int64_t stride, const T* y, std::int64_t y_stride,
                           const ProbabilityWeights<T>& u, std::int64_t classes, std::int64_t lanes,
                           const T* max, double* dot, double* total) {
    for (std::int64_t l = 0; l < lanes; ++l) dot[l] = total[l] = 0.0;
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* row = x + c * stride;
        const T* target = y + c * y_stride;
        const T w = u.weight == nullptr ? T(1) : u.weight[c];
        if (std::isinf(w)) {
            for (std::int64_t l = 0; l < lanes; ++l) {
                const T weight_l = w * (u.keep * target[l] + u.uniform);
                const double difference = static_cast<double>(row[l] - max[l]);
                dot[l] += weighted_difference<true>(static_cast<double>(weight_l), difference);
                total[l] += static_cast<double>(weight_l);
            }
            continue;
        }
        for (std::int64_t l = 0; l < lanes; ++l) {
            const T weight_l = w * (u.keep * target[l] + u.uniform);
            dot[l] += static_cast<double>(weight_l) * static_cast<double>(row[l] - max[l]);
            total[l] += static_cast<double>(weight_l);
        }
    }
}

// Note: tile transposes. A tile of B rows x B classes (B floats to a vector register: 8 with AVX2
// and AVX-512, 4 otherwise) is loaded as B row vectors, transposed in registers with shuffles, and
// stored as B class vectors; the element loop it replaces costs one load and one scattered store per
// element, about a fifth of the time of a 1048576 x 10 loss. The classes go in chunks of B; with
// C >= B classes the last chunk starts at C - B (overlapping the one before, which gives the same
// values again), so that no vector runs past a row. With C < B a row vector runs past its row into
// the next (the classes beyond are never used on the way in, and on the way out are written first and
// then overwritten by the next row's own), so a block is taken only where that stays within the
// tile's rows. The rows of an unfinished block, and double tiles, go element by element. Written
// with GCC's vector extensions, which every instruction set here compiles (no intrinsics).
#if defined(__GNUC__) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FASTXENT_TILE_SHUFFLES 1
#endif
#endif

#ifdef FASTXENT_TILE_SHUFFLES
#if FASTXENT_VECTOR_BYTES >= 32
constexpr int kTransposeBlock = 8;
typedef float TransposeVector __attribute__((vector_size(32)));
typedef float TransposeVectorUnaligned __attribute__((vector_size(32), aligned(4), may_alias));

inline void transpose_block(TransposeVector (&v)[8]) {
    TransposeVector t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shufflevector(v[i], v[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(v[i], v[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    TransposeVector s[8];
    for (int i = 0; i < 8; i += 4) {
        s[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        s[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        s[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        s[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int i = 0; i < 4; ++i) {
        v[i] = __builtin_shufflevector(s[i], s[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        v[i + 4] = __builtin_shufflevector(s[i], s[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}
#else
constexpr int kTransposeBlock = 4;
typedef float TransposeVector __attribute__((vector_size(16)));
typedef float TransposeVectorUnaligned __attribute__((vector_size(16), aligned(4), may_alias));

inline void transpose_block(TransposeVector (&v)[4]) {
    const TransposeVector t0 = __builtin_shufflevector(v[0], v[1], 0, 4, 1, 5);
    const TransposeVector t1 = __builtin_shufflevector(v[0], v[1], 2, 6, 3, 7);
    const TransposeVector t2 = __builtin_shufflevector(v[2], v[3], 0, 4, 1, 5);
    const TransposeVector t3 = __builtin_shufflevector(v[2], v[3], 2, 6, 3, 7);
    v[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    v[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    v[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    v[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}
#endif

// Unaligned loads and stores of B floats, through a type that may alias float (as the intrinsics'
// vector types do).
inline TransposeVector load_transpose_vector(const float* from) {
    return *reinterpret_cast<const TransposeVectorUnaligned*>(from);
}
inline void store_transpose_vector(float* to, TransposeVector v) {
    *reinterpret_cast<TransposeVectorUnaligned*>(to) = v;
}

// Where whole blocks of rows stop. With C >= B, at the last whole block. With C < B, a block of rows
// l..l + B - 1 reads (or writes) B elements from its row starts, up to (l + B - 1) * row_stride + B,
// which must stay within the tile's last row.
inline std::int64_t transpose_block_rows(std::int64_t row_stride, std::int64_t classes, std::int64_t lanes) {
    constexpr int B = kTransposeBlock;
    if (classes >= B) return lanes / B * B;
    if (row_stride < classes) return 0;
    std::int64_t l = 0;
    while (l + B <= lanes && (l + B - 1) * row_stride + B <= (lanes - 1) * row_stride + classes) l += B;
    return l;
}

// The start of chunk `c` of B classes (see the Note above): c, or C - B for the last chunk of C >= B.
inline std::int64_t transpose_chunk_start(std::int64_t c, std::int64_t classes) {
    constexpr int B = kTransposeBlock;
    return c + B > classes && classes >= B ? classes - B : c;
}

// body(l, c) for each whole block of rows l..l + B - 1 and each chunk start c, in that order; returns
// the row where whole blocks stop.
template <typename Body>
std::int64_t for_each_transpose_block(std::int64_t row_stride, std::int64_t classes, std::int64_t lanes, Body body) {
    constexpr int B = kTransposeBlock;
    const std::int64_t blocks_end = transpose_block_rows(row_stride, classes, lanes);
    for (std::int64_t l = 0; l < blocks_end; l += B) {
        for (std::int64_t chunk = 0; chunk < classes; chunk += B) body(l, transpose_chunk_start(chunk, classes));
    }
    return blocks_end;
}

inline std::int64_t transpose_into_tile_blocks(const float* rows, std::int64_t row_stride, std::int64_t classes,
                                               std::int64_t lanes, float* tile) {
    constexpr int B = kTransposeBlock;
    const std::int64_t count = classes < B ? classes : B;  // class vectors stored per chunk
    return for_each_transpose_block(row_stride, classes, lanes, [&](std::int64_t l, std::int64_t c) {
        TransposeVector v[B];
#pragma GCC unroll 8
        for (int i = 0; i < B; ++i) v[i] = load_transpose_vector(rows + (l + i) * row_stride + c);
        transpose_block(v);
        // Unrolled, so that v stays in registers.
#pragma GCC unroll 8
        for (int j = 0; j < B; ++j) {
            if (j < count) store_transpose_vector(tile + (c + j) * kTileLanes + l, v[j]);
        }
    });
}

inline std::int64_t transpose_from_tile_blocks(const float* tile, std::int64_t classes, std::int64_t lanes,
                                               float* rows, const float* prefetch_next = nullptr) {
    constexpr int B = kTransposeBlock;
    const std::int64_t count = classes < B ? classes : B;  // class vectors loaded per chunk
    return for_each_transpose_block(classes, classes, lanes, [&](std::int64_t l, std::int64_t c) {
        if (prefetch_next != nullptr && c == 0) {
            // The next tile's rows l .. l + B - 1, into L2 for writing (see the Note on prefetching a
            // tile's result rows).
            prefetch_range<1, 2>(prefetch_next + l * classes, 0, B * classes);
        }
        TransposeVector v[B];
#pragma GCC unroll 8
        for (int j = 0; j < B; ++j) {
            v[j] = j < count ? load_transpose_vector(tile + (c + j) * kTileLanes + l) : TransposeVector{};
        }
        transpose_block(v);
        // Rows in order: with C < B, each row's store overwrites what the previous one wrote past its
        // end.
#pragma GCC unroll 8
        for (int i = 0; i < B; ++i) store_transpose_vector(rows + (l + i) * classes + c, v[i]);
    });
}
#endif

// Copies a tile of `lanes` contiguous rows of `classes` elements (rows `row_stride` apart) into
// tile[c * kTileLanes + l], and back (see the Note above).
template <typename T>
void transpose_into_tile(const T* rows, std::int64_t row_stride, std::int64_t classes,
                         std::int64_t lanes, T* tile) {
    std::int64_t l = 0;
#ifdef FASTXENT_TILE_SHUFFLES
    if constexpr (std::is_same_v<T, float>) l = transpose_into_tile_blocks(rows, row_stride, classes, lanes, tile);
#endif
    for (; l < lanes; ++l) {
        const T* row = rows + l * row_stride;
        for (std::int64_t c = 0; c < classes; ++c) tile[c * kTileLanes + l] = row[c];
    }
}

template <typename T>
void transpose_from_tile(const T* tile, std::int64_t classes, std::int64_t lanes, T* rows,
                         [[maybe_unused]] const T* prefetch_next = nullptr) {
    std::int64_t l = 0;
#ifdef FASTXENT_TILE_SHUFFLES
    if constexpr (std::is_same_v<T, float>) l = transpose_from_tile_blocks(tile, classes, lanes, rows, prefetch_next);
#endif
    for (; l < lanes; ++l) {
        T* row = rows + l * classes;
        for (std::int64_t c = 0; c < classes; ++c) row[c] = tile[c * kTileLanes + l];
    }
}

// Note: how many classes a transposed tile takes. Up to kSmallClasses everywhere; float rows up to
// kTileClasses where the tiles are transposed in 8 x 8 blocks (AVX2, AVX-512). A row of 33 to 64
// classes read whole (the rows strategy) pays a fixed cost per row, its max and its sum each folded
// from vector accumulators, and a scalar log, which at 33 classes is more than its exponentials; in
// tiles those are vectorised across 128 rows. Measured on float32 rows with AVX2, two threads,
// against whole rows in the same process: 127100 x 33 loss in 0.28 of the time, 65536 x 64 in 0.54
// (gradient 0.40 and 0.60, log_softmax 0.40 and 0.79, softmax at 64 classes 0.55). Beyond 64 the
// two transposes catch up with what the tiles save: log_softmax of 96 classes took 1.05 of the
// rows' time, of 128 classes 1.26 (the loss 0.91 there). Double tiles, transposed element by
// element, and SSE2 tiles of 4 x 4 blocks lost from 64 classes on (1.2 to 3.5 times the rows'
// time), so they keep kSmallClasses.
template <typename T>
constexpr std::int64_t transposed_tile_classes() {
#if defined(FASTXENT_TILE_SHUFFLES) && FASTXENT_VECTOR_BYTES >= 32
    return std::is_same_v<T, float> ? kTileClasses : kSmallClasses;
#else
    return kSmallClasses;
#endif
}

// Note: logsumexp at infinities. A row whose max is +inf has logsumexp +inf, a row of -inf has -inf
// (PyTorch shifts by 0 instead of an infinite max); a NaN anywhere in the row gives NaN. The shifted
// sum cannot tell these apart (inf - inf), so this rare case looks at the row again.
template <typename T>
double logsumexp_from_stats(const RowStats& stats, const T* x, std::int64_t stride, std::int64_t n) {
    if (!std::isinf(stats.max)) return stats.max + stats.log_sum;
    for (std::int64_t i = 0; i < n; ++i) {
        if (std::isnan(x[i * stride])) return std::numeric_limits<double>::quiet_NaN();
    }
    return stats.max;
}

}  // namespace
}  // namespace fastxent

// ---------------------------------------------------------------------------------------------------
// Scoring helpers (score.cpp): the entropy's second moment, the first index of a value, counts of
// larger logits. Added at the end so that the helpers above stay as they are.
namespace fastxent {
namespace {

// An integer of T's width, so that a loop mixing logits and indices vectorises without widening.
template <typename T>
struct SameWidthIndex;
template <>
struct SameWidthIndex<float> {
    using type = std::int32_t;
};
template <>
struct SameWidthIndex<double> {
    using type = std::int64_t;
};

// The first i with x_i == value (or, with find_nan, the first NaN), or n if there is none. Blocks of
// kSumBlock elements, each a branch-free min-index reduction that vectorises, with an exit between
// blocks: a row whose maximum is near its start is not read to the end.
template <typename T, bool find_nan>
std::int64_t row_first_index(const T* x, std::int64_t n, T value) {
    using Index = typename SameWidthIndex<T>::type;
    for (std::int64_t start = 0; start < n; start += kSumBlock) {
        const Index count = static_cast<Index>(n - start < kSumBlock ? n - start : kSumBlock);
        const T* block = x + start;
        Index first = count;
        for (Index i = 0; i < count; ++i) {
            const bool hit = find_nan ? block[i] != block[i] : block[i] == value;
            const Index candidate = hit ? i : count;
            first = candidate < first ? candidate : first;
        }
        if (first < count) return start + first;
    }
    return n;
}

template <typename T>
std::int64_t row_first_index_of(const T* x, std::int64_t n, T value) {
    return row_first_index<T, false>(x, n, value);
}

template <typename T>
std::int64_t row_first_nan(const T* x, std::int64_t n) {
    return row_first_index<T, true>(x, n, T(0));
}

// How many x_i are strictly greater than value (NaN is greater than nothing, and nothing is greater
// than NaN).
template <typename T>
std::int64_t row_count_greater(const T* x, std::int64_t n, T value) {
    using Index = typename SameWidthIndex<T>::type;
    std::int64_t total = 0;
    for (std::int64_t start = 0; start < n; start += kSumBlock) {
        const Index count = static_cast<Index>(n - start < kSumBlock ? n - start : kSumBlock);
        const T* block = x + start;
        Index greater = 0;
        for (Index i = 0; i < count; ++i) greater += block[i] > value ? Index(1) : Index(0);
        total += greater;
    }
    return total;
}

// Note: the scoring pass. One pass over a contiguous row gives its max (ignoring NaN, as row_max),
// the first index of that max, and how many elements are strictly greater than `value` (as
// row_count_greater). Each of kMaxAccumulators lanes keeps the first index of its own max (a strict
// greater-than never moves it to a later tie), and the lanes are merged by the smallest index among
// those that hold the row's max, which is the first index of the max in the row. A lane that never
// sees a value above -inf keeps the index n; a row with no value above -inf gives argmax 0, as
// numpy.argmax. On 2048 rows of 32000 floats read from memory (AVX2, one thread) this pass takes
// about 1.5 times the max alone, as long as the max followed by the two passes it replaces. The
// indices are Index (T's width) so that the loop vectorises: float rows of 2^30 or more classes take
// the separate passes (fits_scoring_pass).
template <typename T>
struct MaxArgmaxCount {
    T max;
    std::int64_t argmax;
    std::int64_t greater;
};

template <typename T>
bool fits_scoring_pass(std::int64_t n) {
    using Index = typename SameWidthIndex<T>::type;
    return n < static_cast<std::int64_t>(std::numeric_limits<Index>::max() / 2);
}

// Note: the scoring pass's ends. The lanes are merged by halves, as fold_max's (see the Note on folds
// unrolled), each pair keeping the larger max, or on a tie the smaller index: the largest (max,
// -index) in a total order (the lanes hold no NaN), so any order of merging gives the row's max and
// the smallest index holding it. Merged one lane after another, in two loops of 32 dependent steps
// (AVX2), the merge was about half of the time of a row of 128 classes; merged by halves but with
// && and || (branches on the data), 0.94 of that time. A row's last values, after its last whole
// group of L, are taken as one more group: the last L values, some of them read again. A value read
// again by another lane comes with its own index, so it changes neither the max nor the smallest
// index holding it; only its count is masked out. (One at a time, they were up to L - 1 dependent
// scalar steps.) The sum of exponentials that follows takes its last values as row_sum_terms does
// (row_sum_exp_and_moment). Measured on score of float32 rows against the build before, paired in
// one process: 65536 x 100 and x 127 and x 128 in 0.54-0.57 of the time on one thread (0.58-0.65 on
// two), 8192 x 1000 in 0.81-0.83 (0.83-0.90), 2048 x 32000 and 256 x 128256 unchanged (1.00-1.02);
// bfloat16 65536 x 100 in 0.75 (0.81); SSE2 0.91-0.94 at 100-127 classes.
// The pass over n values read(i) (i of type Index); `read` may also store what it reads (a staged
// row converted on the way, see score.cpp).
template <typename T, typename Read>
MaxArgmaxCount<T> max_argmax_count(std::int64_t n, T value, Read read) {
    using Index = typename SameWidthIndex<T>::type;
    constexpr int L = kMaxAccumulators<T>;
    T acc[L];
    Index index[L];
    Index greater[L];
    const Index none = static_cast<Index>(n);
    for (int j = 0; j < L; ++j) {
        acc[j] = negative_infinity<T>();
        index[j] = none;
        greater[j] = 0;
    }
    Index i = 0;
    const Index count = static_cast<Index>(n);
    for (; i + L <= count; i += L) {
        for (int j = 0; j < L; ++j) {
            // Masks as integers (all ones or zero): with selects, GCC leaves the SSE2 loop scalar.
            const T v = read(static_cast<Index>(i + j));
            const Index above = -static_cast<Index>(v > acc[j]);
            acc[j] = v > acc[j] ? v : acc[j];
            index[j] = (index[j] & ~above) | (static_cast<Index>(i + j) & above);
            greater[j] -= -static_cast<Index>(v > value);
        }
    }
    if (i < count && i > 0) {
        // The last L values, some of them again (see the Note on the scoring pass's ends).
        const Index last = count - L;
        const Index counted = i - last;
        for (int j = 0; j < L; ++j) {
            const T v = read(static_cast<Index>(last + j));
            const Index above = -static_cast<Index>(v > acc[j]);
            acc[j] = v > acc[j] ? v : acc[j];
            index[j] = (index[j] & ~above) | (static_cast<Index>(last + j) & above);
            greater[j] -= -static_cast<Index>(j >= counted) & -static_cast<Index>(v > value);
        }
    } else {
        for (; i < count; ++i) {
            const T v = read(i);
            const bool above = v > acc[0];
            acc[0] = above ? v : acc[0];
            index[0] = above ? i : index[0];
            greater[0] += v > value ? Index(1) : Index(0);
        }
    }
    fold_max_index_halves<L / 2>(acc, index);
    MaxArgmaxCount<T> result{acc[0], 0, static_cast<std::int64_t>(fold_sum(greater))};
    result.argmax = index[0] < none ? static_cast<std::int64_t>(index[0]) : 0;
    return result;
}

template <typename T>
MaxArgmaxCount<T> row_max_argmax_count(const T* x, std::int64_t n, T value) {
    return max_argmax_count(n, value, [x](typename SameWidthIndex<T>::type i) { return x[i]; });
}

// Note: entropy. With e_i = exp(x_i - shift), S0 = sum_i e_i and S1 = sum_i e_i * (x_i - shift),
// the entropy of the softmax is log(S0) - S1 / S0: both terms are >= 0 (S1 <= 0), so nothing cancels.
// A masked logit (-inf) has x_i - shift = -inf; its term must be 0 (the limit of p log p), not
// e_i * -inf, so that masked rows keep a finite entropy. The e_i are row_sum_exp's terms (so that
// score's logsumexp is the loss's); below log(FLT_MIN) (log(DBL_MIN) for double) exp_in_sum gives
// the smallest normal number instead of 0, so the factor x_i - shift is taken as 0 there: the term
// is 0, its true value below 1e-36 (1e-306). A NaN stays NaN. One loop, blocked like row_sum_exp
// (T inside a block, double across blocks, a row's last values as one more group), so that S0 is
// row_sum_exp's sum to the bit; every S1 term has the same sign.
inline float zero_below(float shifted) { return shifted < -87.33654475f ? 0.0f : shifted; }
inline double zero_below(double shifted) { return shifted < -708.3964185322641 ? 0.0 : shifted; }

template <typename T>
void row_sum_exp_and_moment(const T* x, std::int64_t n, T shift, double& sum, double& moment,
                            NextRow next = {}) {
    constexpr int L = kAccumulators<T>;
    sum = 0.0;
    moment = 0.0;
    for (std::int64_t start = 0; start < n; start += kSumBlock) {
        const std::int64_t stop = n - start < kSumBlock ? n : start + kSumBlock;
        T sum_acc[L];
        T moment_acc[L];
        for (int j = 0; j < L; ++j) sum_acc[j] = moment_acc[j] = T(0);
        std::int64_t i = for_each_group<L>(start, stop, next, [&](std::int64_t first) {
            for (int j = 0; j < L; ++j) {
                const T e = exp_in_sum(x[first + j], shift);
                sum_acc[j] += e;
                moment_acc[j] += e * zero_below(x[first + j] - shift);
            }
        });
        if (stop - i > L / 2 && stop - start >= L) {
            // The last elements as one more group, as row_sum_terms takes them (see the Note on a
            // row's last elements): the same terms in the same accumulators, so the same sum.
            const T* last = x + stop - L;
            const int skip = static_cast<int>(L - (stop - i));
            T e[L];
            T term[L];
            for (int j = 0; j < L; ++j) {
                e[j] = exp_in_sum(last[j], shift);
                term[j] = e[j] * zero_below(last[j] - shift);
            }
            for (int j = 0; j < L; ++j) {
                sum_acc[j] += j >= skip ? e[j] : T(0);
                moment_acc[j] += j >= skip ? term[j] : T(0);
            }
            i = stop;
        }
        for (; i < stop; ++i) {
            const T e = exp_in_sum(x[i], shift);
            sum_acc[0] += e;
            moment_acc[0] += e * zero_below(x[i] - shift);
        }
        sum += static_cast<double>(fold_sum(sum_acc));
        moment += static_cast<double>(fold_sum(moment_acc));
    }
}

// Tiles of rows (lane l of class c at x[c * stride + l]), as tile_max and tile_sums.

// Per lane: the max (ignoring NaN), S0 and S1 of row_sum_exp_and_moment, in double.
template <typename T>
void tile_max_sum_and_moment(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes,
                             T* max, double* sum, double* moment) {
    for (std::int64_t l = 0; l < lanes; ++l) {
        max[l] = negative_infinity<T>();
        sum[l] = moment[l] = 0.0;
    }
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* row = x + c * stride;
        for (std::int64_t l = 0; l < lanes; ++l) max[l] = row[l] > max[l] ? row[l] : max[l];
    }
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* row = x + c * stride;
        for (std::int64_t l = 0; l < lanes; ++l) {
            const T e = exp_in_sum(row[l], max[l]);
            sum[l] += static_cast<double>(e);
            moment[l] += static_cast<double>(e * zero_below(row[l] - max[l]));
        }
    }
}

// Per lane: the first class holding the lane's max, or the first NaN if the lane has one (as
// numpy.argmax). Scans the classes backwards so that the last hit, the first index, is kept.
template <typename T>
void tile_argmax(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes, const T* max,
                 std::int64_t* argmax) {
    using Index = typename SameWidthIndex<T>::type;
    Index first_max[kTileLanes];
    Index first_nan[kTileLanes];
    const Index none = static_cast<Index>(classes);
    for (std::int64_t l = 0; l < lanes; ++l) first_max[l] = first_nan[l] = none;
    for (std::int64_t c = classes - 1; c >= 0; --c) {
        const T* row = x + c * stride;
        const Index index = static_cast<Index>(c);
        for (std::int64_t l = 0; l < lanes; ++l) {
            first_max[l] = row[l] == max[l] ? index : first_max[l];
            first_nan[l] = row[l] != row[l] ? index : first_nan[l];
        }
    }
    for (std::int64_t l = 0; l < lanes; ++l) {
        const Index found = first_nan[l] < none ? first_nan[l] : first_max[l];
        argmax[l] = static_cast<std::int64_t>(found < none ? found : 0);
    }
}

// Per lane: how many classes are strictly greater than value[l].
template <typename T>
void tile_count_greater(const T* x, std::int64_t stride, std::int64_t classes, std::int64_t lanes,
                        const T* value, std::int64_t* count) {
    using Index = typename SameWidthIndex<T>::type;
    Index greater[kTileLanes];
    for (std::int64_t l = 0; l < lanes; ++l) greater[l] = 0;
    for (std::int64_t c = 0; c < classes; ++c) {
        const T* row = x + c * stride;
        for (std::int64_t l = 0; l < lanes; ++l) greater[l] += row[l] > value[l] ? Index(1) : Index(0);
    }
    for (std::int64_t l = 0; l < lanes; ++l) count[l] = static_cast<std::int64_t>(greater[l]);
}

}  // namespace
}  // namespace fastxent
