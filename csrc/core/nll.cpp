#include "nll.h"

#include <vector>

#include "half.h"
#include "parallel.h"

namespace fastxent {

namespace {

// Note: the sum of nll_loss. The rows are cut into blocks of kNllBlock; within a block, row r is added
// to accumulator r % kNllLanes, in row order, and the accumulators are then added pairwise in a fixed
// tree; the blocks' sums are added in block order. The order depends on the rows only, never on the
// thread count. With one accumulator (row order), each row waited for the previous row's add and the
// loop ran on one thread: 3.7 ms for 1048576 rows, twice the time of the whole cross_entropy of the
// same 1048576 x 2 logits. Paired against that, on 2 threads: 1048576 x 10 log-probabilities in 0.59
// of the time, row losses of 1048576 x 2 in 0.65-0.74; on 1 thread 0.96 and 0.89 (one element a row
// of a 40 MB array: the reads from memory remain). 16-bit log-probabilities were converted to float32
// whole before: float16 1048576 x 10 now takes 0.10 of that time, bfloat16 0.18.
constexpr std::int64_t kNllBlock = 1 << 14;
constexpr int kNllLanes = 8;

// The sum of the losses of rows [first, first + count), written to row_loss when it is set. `next()`
// gives each row's offset of class 0 in turn; classes are `class_stride` apart.
template <typename T, typename Read, typename Next>
double nll_block(Read read, Next next, std::int64_t class_stride, std::int64_t first, std::int64_t count,
                 const std::int64_t* target, const T* weight, std::int64_t ignore_index, T* row_loss) {
    double lanes[kNllLanes] = {};
    for (std::int64_t i = 0; i < count; ++i) {
        const std::int64_t row = first + i;
        const std::int64_t t = target[row];
        const std::int64_t base = next();
        double loss = 0.0;
        if (t != ignore_index) {
            const double w = weight == nullptr ? 1.0 : static_cast<double>(weight[t]);
            loss = -w * static_cast<double>(read(base + t * class_stride));
        }
        if (row_loss != nullptr) row_loss[row] = static_cast<T>(loss);
        lanes[i % kNllLanes] += loss;
    }
    for (int width = kNllLanes / 2; width > 0; width /= 2) {
        for (int k = 0; k < width; ++k) lanes[k] = lanes[2 * k] + lanes[2 * k + 1];
    }
    return lanes[0];
}

// nll_block over the view's rows; rows one stride apart (a class axis last, the common case) are
// stepped through without the outer and inner positions, rows in blocks by their offsets.
template <typename T, typename Read>
double nll_view_block(Read read, const ClassAxisView& view, std::int64_t first, std::int64_t count,
                      const std::int64_t* target, const T* weight, std::int64_t ignore_index, T* row_loss) {
    const std::int64_t outer_stride = view.outer_stride;
    if (view.block_rows != 0) {
        std::int64_t row = first;
        const auto next = [&row, &view] { return view.row_offset(row++); };
        return nll_block(read, next, view.class_stride, first, count, target, weight, ignore_index, row_loss);
    }
    if (view.inner == 1) {
        std::int64_t base = first * outer_stride - outer_stride;
        const auto next = [&base, outer_stride] { return base += outer_stride; };
        return nll_block(read, next, view.class_stride, first, count, target, weight, ignore_index, row_loss);
    }
    const std::int64_t inner = view.inner;
    std::int64_t outer = first / inner;
    std::int64_t lane = first - outer * inner;
    const auto next = [&outer, &lane, inner, outer_stride] {
        const std::int64_t base = outer * outer_stride + lane;
        if (++lane == inner) {
            lane = 0;
            ++outer;
        }
        return base;
    };
    return nll_block(read, next, view.class_stride, first, count, target, weight, ignore_index, row_loss);
}

// nll_loss over log-probabilities read through `read(offset)`.
template <typename T, typename Read>
double nll_rows(Read read, const ClassAxisView& view, const std::int64_t* target, const T* weight,
                std::int64_t ignore_index, T* row_loss) {
    const std::int64_t rows = view.rows();
    if (rows == 0) return 0.0;  // (and inner may be 0)
    const std::int64_t blocks = (rows + kNllBlock - 1) / kNllBlock;
    if (blocks <= 1) return nll_view_block(read, view, 0, rows, target, weight, ignore_index, row_loss);
    std::vector<double> sums(static_cast<std::size_t>(blocks));
    const int threads = threads_for(blocks, rows);
    for_each_item(blocks, threads, [&](std::int64_t b) {
        const std::int64_t first = b * kNllBlock;
        const std::int64_t count = rows - first < kNllBlock ? rows - first : kNllBlock;
        sums[static_cast<std::size_t>(b)] =
            nll_view_block(read, view, first, count, target, weight, ignore_index, row_loss);
    });
    double total = 0.0;
    for (const double sum : sums) total += sum;
    return total;
}

}  // namespace

template <typename T>
double nll_loss(const T* log_probs, const std::uint16_t* log_probs_half, HalfFormat half_format,
                const ClassAxisView& view, const std::int64_t* target, const T* weight, std::int64_t ignore_index,
                T* row_loss) {
    if (log_probs_half == nullptr) {
        const auto read = [log_probs](std::int64_t i) { return log_probs[i]; };
        return nll_rows(read, view, target, weight, ignore_index, row_loss);
    }
    if (half_format == HalfFormat::bfloat16) {
        const auto read = [log_probs_half](std::int64_t i) { return bfloat16_to_float(log_probs_half[i]); };
        return nll_rows(read, view, target, weight, ignore_index, row_loss);
    }
    const auto read = [log_probs_half](std::int64_t i) { return float16_to_float(log_probs_half[i]); };
    return nll_rows(read, view, target, weight, ignore_index, row_loss);
}

template double nll_loss<float>(const float*, const std::uint16_t*, HalfFormat, const ClassAxisView&,
                                const std::int64_t*, const float*, std::int64_t, float*);
template double nll_loss<double>(const double*, const std::uint16_t*, HalfFormat, const ClassAxisView&,
                                 const std::int64_t*, const double*, std::int64_t, double*);

}  // namespace fastxent
