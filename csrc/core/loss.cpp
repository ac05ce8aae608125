// Cross-entropy forward, gradient and the fused forward + gradient, for index and probability
// targets. Compiled once per instruction set (FASTXENT_ISA names the namespace; see CMakeLists.txt).
//
// Note: one pass. Per row the logits are read from memory once: the max and the sum of exponentials
// (and, with label smoothing or probability targets, the weighted sums) are taken while the row is in
// cache, and the gradient is written straight from them. The loss needs only those sums:
//   log_softmax[t] = (x[t] - max) - log(sum)
//   sum_c w_c log_softmax[c] = sum_c w_c (x[c] - max) - W log(sum)
//   sum_c u_c log_softmax[c] = sum_c u_c (x[c] - max) - U log(sum)      (probability targets)
// so no log_softmax array is ever formed.
#include <cmath>
#include <limits>

#include "kernels.h"
#include "parallel.h"
#include "row_engine.h"
#include "staging.h"
#include "stream.h"

namespace fastxent {
namespace FASTXENT_ISA {

namespace {

// -(sum_c u_c log p_c) of a row, from dot = sum_c u_c (x_c - max), total = sum_c u_c and its log_sum:
// the loss of probability targets (u_c their weighted probabilities), and the smoothing part of index
// targets' (u_c the class weights). PyTorch's is a sum that starts at +0 and is then negated, so that
// its zero is -0 whatever the terms; a zero is made -0 here alike, whichever sign the arithmetic (or
// its contraction into an FMA) left.
inline double negated_log_prob_sum(double dot, double total, double log_sum) {
    const double loss = -(dot - total * log_sum);
    return loss == 0.0 ? -0.0 : loss;
}

// What every row of one call shares.
template <typename T>
struct LossContext {
    const CrossEntropyProblem<T>& problem;
    std::int64_t classes;
    double smoothing;        // e
    double weight_total;     // W = sum_c w_c
    bool needs_loss;         // a loss is reported (row losses or the partial sums)
    ProbabilityWeights<T> probability;  // u_c of probability targets; its infinite_weight serves every target
    Logits<T> logits;        // how the logits are read when staged
    Destination<T> grad;     // where the gradient goes when staged
    // The gradient of copied tiles along an inner axis (loss_copied_tile) is streamed (see the Note
    // on streaming stores, stream.h): it is large, and it is the problem's own (not staged).
    bool stream_grad;

    explicit LossContext(const CrossEntropyProblem<T>& p)
        : problem(p),
          classes(p.view.classes),
          smoothing(p.label_smoothing),
          weight_total(static_cast<double>(p.view.classes)),
          needs_loss(p.row_loss != nullptr || p.partial_sums != nullptr),
          probability{static_cast<T>(1.0 - p.label_smoothing),
                      static_cast<T>(p.view.classes > 0 ? p.label_smoothing / p.view.classes : 0.0), p.weight,
                      false},
          logits{p.input, p.input_half, p.half_format, p.softcap},
          grad{p.grad, p.grad_half, p.half_format},
          stream_grad(p.grad != nullptr && p.view.inner > 1 && large_result<T>(p.view)) {
        if (p.weight != nullptr) {
            weight_total = 0.0;
            for (std::int64_t c = 0; c < classes; ++c) {
                weight_total += static_cast<double>(p.weight[c]);
                probability.infinite_weight = probability.infinite_weight || std::isinf(p.weight[c]);
            }
        }
    }

    bool ignored(std::int64_t row) const {
        return problem.target_index != nullptr && problem.target_index[row] == problem.ignore_index;
    }
    double class_weight(std::int64_t c) const {
        return problem.weight == nullptr ? 1.0 : static_cast<double>(problem.weight[c]);
    }
    double row_scale(std::int64_t row) const {
        return problem.grad_rows == nullptr ? problem.grad_scale
                                            : problem.grad_scale * static_cast<double>(problem.grad_rows[row]);
    }
    // Index targets: the loss of a row from its statistics, its target logit and (with smoothing)
    // S = sum_c w_c (x_c - max).
    double index_loss(const RowStats& stats, double target_logit, double weight_t, double weighted_sum) const {
        const double log_prob_t = (target_logit - stats.max) - stats.log_sum;
        double loss = (1.0 - smoothing) * (-weight_t * log_prob_t);
        if (smoothing > 0.0) {
            loss += (smoothing / static_cast<double>(classes)) *
                    negated_log_prob_sum(weighted_sum, weight_total, stats.log_sum);
        }
        return loss;
    }
    // Index targets, gradient: p_j * a - b * w_j, minus (1 - e) w_t at j = t; the z-loss adds
    // 2 z lse to a.
    double grad_a(double weight_t, const RowStats& stats) const {
        return (1.0 - smoothing) * weight_t + uniform_a() + z_loss_a(stats);
    }
    // e W / C, and b = e / C below: exactly 0 without smoothing, even with a NaN class weight (which
    // must spoil only the rows that target its class, as in PyTorch).
    double uniform_a() const {
        return smoothing > 0.0 ? smoothing * weight_total / static_cast<double>(classes) : 0.0;
    }
    double z_loss_a(const RowStats& stats) const {
        return problem.z_loss == 0.0 ? 0.0 : 2.0 * problem.z_loss * (stats.max + stats.log_sum);
    }
    double grad_b() const { return smoothing / static_cast<double>(classes); }
    double grad_b_weighted(std::int64_t c) const { return smoothing > 0.0 ? grad_b() * class_weight(c) : 0.0; }
    // The target's own gradient, in double: it cancels (p_t close to 1), so it is not left to the vector
    // loop. Scaled term by term (see the Note on a non-finite scale in row_engine.h): an infinite scale
    // gives NaN here, as in PyTorch.
    double target_grad(const RowStats& stats, double target_logit, std::int64_t t, double scale) const {
        return target_grad_from(target_probability(stats, target_logit), stats, t, scale);
    }
    static double target_probability(const RowStats& stats, double target_logit) {
        return exp_double((target_logit - stats.max) - stats.log_sum);
    }
    double target_grad_from(double p_t, const RowStats& stats, std::int64_t t, double scale) const {
        const double weight_t = class_weight(t);
        return p_t * grad_a(weight_t, stats) * scale - (grad_b_weighted(t) + (1.0 - smoothing) * weight_t) * scale;
    }
};

// Note: a gradient's rows in groups. An index-target row with a gradient (or with statistics saved
// for one) needs, besides its passes over the logits, the log of its sum, the inverse of the sum
// (exp(-log_sum)) and its target's probability: scalar calls, of libm's log among them, that took
// a quarter of the time of a gradient of 100-class rows. Rows of up to kGroupedClasses classes
// therefore go in groups (grad_row_group): each row's max and stored exponentials, then the
// group's logs, inverses and target probabilities in vectorised loops (log_double, exp_double),
// then each row's gradient from them. A group holds the exponentials of at most kGroupElements
// logits, so that they are still in cache when scaled. The log of such a row's sum is log_double's
// (not libm's) in every call that sums these terms, grouped or not (a staged call goes row by row),
// so that the loss class's backward, and a 16-bit call, still give the fused float32 gradient's
// bits. Measured against the previous build, paired in one process: the float32 gradient of
// 32768 x 100 rows in 0.74 of the time (one and two threads), 16384 x 256 in 0.83, 4096 x 1000 and
// 256 x 1000 in 0.95-0.96.
constexpr std::int64_t kGroupedClasses = 1024;
constexpr std::int64_t kGroupRows = 16;
constexpr std::int64_t kGroupElements = 4096;

// The log of the sum of a row whose exponentials a gradient is made of (see the Note above).
inline double grad_row_log_sum(double sum, std::int64_t classes) {
    return classes <= kGroupedClasses ? log_double(sum) : std::log(sum);
}

// One contiguous row, its gradient (if wanted) to `grad`, which may be `x` itself. Returns its loss
// (0 for an ignored row). `next`: the next row, prefetched (see row_engine.h), or null.
template <typename T>
double loss_row(const LossContext<T>& ctx, const T* x, std::int64_t row, T* grad, NextRow next = {}) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    const std::int64_t classes = ctx.classes;
    if (ctx.ignored(row)) {
        if (grad != nullptr) {
            for (std::int64_t c = 0; c < classes; ++c) grad[c] = T(0);
        }
        if (p.row_loss != nullptr) p.row_loss[row] = T(0);
        return 0.0;
    }
    const double scale = ctx.row_scale(row);
    double loss = 0.0;

    // Note: which exponentials a row sums. An index-target row with a gradient sums the exponentials
    // that its gradient is made of (row_exps_into), and so does one whose statistics are saved for a
    // later gradient (the loss class), so that a gradient from saved statistics is the same to the
    // last bit. Other rows (a loss alone, probability targets) sum exp_in_sum's terms: their losses
    // may differ from these in the last bit.
    if (p.target_index != nullptr && p.saved_stats == nullptr && (grad != nullptr || p.save_stats != nullptr)) {
        // Everything that reads the logits is done before they may be overwritten (grad may be x).
        const std::int64_t t = p.target_index[row];
        const double target_logit = static_cast<double>(x[t]);
        const double weight_t = ctx.class_weight(t);
        const T max = row_max(x, classes);
        const bool smoothed_loss = ctx.smoothing > 0.0 && ctx.needs_loss;
        const double weighted_sum =
            smoothed_loss ? row_weighted_sum(x, p.weight, classes, max, ctx.probability.infinite_weight) : 0.0;
        const RowStats stats{static_cast<double>(max),
                             grad_row_log_sum(row_exps_into(x, grad, classes, max, next), classes)};
        if (p.save_stats != nullptr) p.save_stats[row] = stats;
        if (ctx.needs_loss) loss = ctx.index_loss(stats, target_logit, weight_t, weighted_sum);
        if (grad != nullptr) {
            scale_index_grad(p.weight, grad, classes, inverse_sum<T>(stats),
                             static_cast<T>(ctx.grad_a(weight_t, stats)), static_cast<T>(ctx.grad_b()),
                             static_cast<T>(scale));
            grad[t] = static_cast<T>(ctx.target_grad(stats, target_logit, t, scale));
        }
        if (p.row_loss != nullptr) p.row_loss[row] = static_cast<T>(loss);
        return loss;
    }

    const RowStats stats = p.saved_stats != nullptr ? p.saved_stats[row] : row_stats(x, classes, next);
    if (p.save_stats != nullptr) p.save_stats[row] = stats;
    const T max = static_cast<T>(stats.max);

    if (p.target_index != nullptr) {
        const std::int64_t t = p.target_index[row];
        const double target_logit = static_cast<double>(x[t]);
        const double weight_t = ctx.class_weight(t);
        if (ctx.needs_loss) {
            const bool infinite_weight = ctx.probability.infinite_weight;
            const double weighted_sum =
                ctx.smoothing > 0.0 ? row_weighted_sum(x, p.weight, classes, max, infinite_weight) : 0.0;
            loss = ctx.index_loss(stats, target_logit, weight_t, weighted_sum);
        }
        if (grad != nullptr) {
            write_index_grad(x, p.weight, grad, classes, stats, static_cast<T>(ctx.grad_a(weight_t, stats)),
                             static_cast<T>(ctx.grad_b()), static_cast<T>(scale));
            grad[t] = static_cast<T>(ctx.target_grad(stats, target_logit, t, scale));
        }
    } else {
        const T* y = p.target_prob + row * classes;
        double dot = 0.0;
        double total = 0.0;
        row_probability_sums(x, y, ctx.probability, classes, max, dot, total);
        loss = negated_log_prob_sum(dot, total, stats.log_sum);
        if (grad != nullptr) {
            write_probability_grad(x, y, ctx.probability, grad, classes, stats,
                                   static_cast<T>(total + ctx.z_loss_a(stats)), static_cast<T>(scale));
        }
    }
    if (p.row_loss != nullptr) p.row_loss[row] = static_cast<T>(loss);
    return loss;
}

// Whether the rows of a rows-strategy call go in groups (see the Note on a gradient's rows in groups):
// loss_row's first case, read in place.
template <typename T>
bool grouped_rows(const LossContext<T>& ctx) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    return p.target_index != nullptr && p.saved_stats == nullptr && (p.grad != nullptr || p.save_stats != nullptr) &&
           ctx.classes <= kGroupedClasses && !ctx.logits.staged();
}

// Rows first .. first + count - 1 (count <= kGroupRows) of a grouped_rows call, as loss_row computes
// each: their losses added to `total` one by one, in row order, as the rows loop adds loss_row's.
template <typename T>
double grad_row_group(const LossContext<T>& ctx, std::int64_t first, std::int64_t count, double total) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    const ClassAxisView& view = p.view;
    const std::int64_t classes = ctx.classes;
    const bool smoothed_loss = ctx.smoothing > 0.0 && ctx.needs_loss;
    double max[kGroupRows];
    double sum[kGroupRows];
    double target_logit[kGroupRows];
    double weighted_sum[kGroupRows];
    for (std::int64_t i = 0; i < count; ++i) {
        const std::int64_t row = first + i;
        // An ignored row's statistics are not used; 1 keeps its log finite.
        max[i] = target_logit[i] = weighted_sum[i] = 0.0;
        sum[i] = 1.0;
        if (ctx.ignored(row)) continue;
        // Everything that reads the logits is done before they may be overwritten (grad may be x).
        const T* x = p.input + view.row_offset(row);
        T* grad = p.grad == nullptr ? nullptr : p.grad + row * classes;
        target_logit[i] = static_cast<double>(x[p.target_index[row]]);
        const T row_max_value = row_max(x, classes);
        max[i] = static_cast<double>(row_max_value);
        if (smoothed_loss) {
            weighted_sum[i] =
                row_weighted_sum(x, p.weight, classes, row_max_value, ctx.probability.infinite_weight);
        }
        sum[i] = row_exps_into(x, grad, classes, row_max_value, next_row(ctx.logits, view, row));
    }
    double log_sum[kGroupRows];
    T inverse[kGroupRows];
    double target_p[kGroupRows];
    for (std::int64_t i = 0; i < count; ++i) log_sum[i] = log_double(sum[i]);
    for (std::int64_t i = 0; i < count; ++i) {
        const RowStats stats{max[i], log_sum[i]};
        inverse[i] = inverse_sum<T>(stats);
        target_p[i] = LossContext<T>::target_probability(stats, target_logit[i]);
    }
    for (std::int64_t i = 0; i < count; ++i) {
        const std::int64_t row = first + i;
        T* grad = p.grad == nullptr ? nullptr : p.grad + row * classes;
        double loss = 0.0;
        if (ctx.ignored(row)) {
            if (grad != nullptr) {
                for (std::int64_t c = 0; c < classes; ++c) grad[c] = T(0);
            }
        } else {
            const std::int64_t t = p.target_index[row];
            const double weight_t = ctx.class_weight(t);
            const RowStats stats{max[i], log_sum[i]};
            if (p.save_stats != nullptr) p.save_stats[row] = stats;
            if (ctx.needs_loss) loss = ctx.index_loss(stats, target_logit[i], weight_t, weighted_sum[i]);
            if (grad != nullptr) {
                const double scale = ctx.row_scale(row);
                scale_index_grad(p.weight, grad, classes, inverse[i],
                                 static_cast<T>(ctx.grad_a(weight_t, stats)), static_cast<T>(ctx.grad_b()),
                                 static_cast<T>(scale));
                grad[t] = static_cast<T>(ctx.target_grad_from(target_p[i], stats, t, scale));
            }
        }
        if (p.row_loss != nullptr) p.row_loss[row] = static_cast<T>(loss);
        total += loss;
    }
    return total;
}

// Rows first .. last - 1 of a grouped_rows call, in groups.
template <typename T>
double grouped_grad_rows(const LossContext<T>& ctx, std::int64_t first, std::int64_t last) {
    const std::int64_t per_group = kGroupElements / ctx.classes;
    const std::int64_t group = per_group < 1 ? 1 : per_group > kGroupRows ? kGroupRows : per_group;
    double total = 0.0;
    for (std::int64_t row = first; row < last; row += group) {
        total = grad_row_group(ctx, row, last - row < group ? last - row : group, total);
    }
    return total;
}

// Note: logs of whole rows as logs of products. A loss reduced over contiguous rows (the rows strategy)
// with the default options (class indices, no class weights, smoothing, z-loss, cap or 16-bit logits)
// adds each kept row's log(sum) once, as a tile's does (see the Note on logs of a tile as one log of
// products, row_engine.h): so the sums are multiplied together, kProductRows at a time, and one log
// is taken per product instead of a libm log per row. The rest of each row's loss, x_t - max, is
// added in double as before, and the loop is loss_row's without its branches for other options.
// Measured against loss_row, paired in one process, one and two threads: float32 41943 x 100 in
// 0.70 of the time, 20971 x 200 in 0.79, 4096 x 1000 in 0.93, 256 x 1000 in 0.94 (2048 x 32000,
// whose rows are long, 0.99); float64 41943 x 100 in 0.89. Row losses (reduction "none") need each
// row's log, so plain_row_losses takes them kLogRows at a time in one vectorised pass: float32
// 32768 x 100 in 0.72, 20971 x 200 in 0.81, 4096 x 1000 in 0.94; float64 32768 x 100 in 0.90.
constexpr int kProductRows = 32;  // a product of 32 sums of at most 2^24 each stays below 2^768

// The options of plain_index_rows, whether the logits are read in place or staged (16-bit logits,
// see the Note on staged tiles of plain rows): no cap, class indices, no class weights, smoothing or
// z-loss, and no statistics saved or used.
template <typename T>
bool plain_index_options(const LossContext<T>& ctx) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    return p.view.inner == 1 && p.softcap == 0.0 && p.target_index != nullptr && p.weight == nullptr &&
           p.label_smoothing == 0.0 && p.z_loss == 0.0 && p.save_stats == nullptr && p.saved_stats == nullptr;
}

// Whether the kernel reads the logits and writes the gradient in place (neither staged).
template <typename T>
bool reads_in_place(const LossContext<T>& ctx) {
    return !ctx.logits.staged() && ctx.problem.grad_half == nullptr;
}

// Rows read in place with plain_index_options: the plain whole-row losses (without a gradient).
template <typename T>
bool plain_index_rows(const LossContext<T>& ctx) {
    return plain_index_options(ctx) && reads_in_place(ctx);
}

// Whether the rows of a rows-strategy problem take plain_rows_loss (or plain_row_losses).
template <typename T>
bool plain_whole_rows(const LossContext<T>& ctx) {
    return plain_index_rows(ctx) && ctx.problem.grad == nullptr && ctx.classes <= kMaxProductClasses;
}

// A kept row of a plain_whole_rows problem: its sum of exponentials against its max, and its
// target logit minus the max.
struct PlainRow {
    double sum;
    double shift;
};

template <typename T>
FASTXENT_MATH PlainRow plain_row(const LossContext<T>& ctx, std::int64_t row, std::int64_t target) {
    const ClassAxisView& view = ctx.problem.view;
    const T* x = ctx.problem.input + view.row_offset(row);
    const T max = row_max(x, ctx.classes);
    const double sum = row_sum_exp(x, ctx.classes, max, next_row(ctx.logits, view, row));
    return PlainRow{sum, static_cast<double>(x[target]) - static_cast<double>(max)};
}

// The sum of the losses of rows first .. last - 1 of a plain_whole_rows problem (see the Note above).
template <typename T>
double plain_rows_loss(const LossContext<T>& ctx, std::int64_t first, std::int64_t last) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    double shifts = 0.0;
    double logs = 0.0;
    double product = 1.0;
    int factors = 0;
    for (std::int64_t row = first; row < last; ++row) {
        const std::int64_t t = p.target_index[row];
        if (t == p.ignore_index) continue;
        const PlainRow kept = plain_row(ctx, row, t);
        product *= kept.sum;
        shifts += -kept.shift;
        if (++factors == kProductRows) {
            logs += std::log(product);
            product = 1.0;
            factors = 0;
        }
    }
    return shifts + (logs + std::log(product));
}

// The row losses of rows first .. last - 1 of a plain_whole_rows problem with row losses wanted, and
// their sum: the rows' sums first, kLogRows rows at a time, then their logs in one vectorised pass
// (see the Note above).
template <typename T>
double plain_row_losses(const LossContext<T>& ctx, std::int64_t first, std::int64_t last) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    double total = 0.0;
    for (std::int64_t start = first; start < last; start += kLogRows) {
        const std::int64_t count = last - start < kLogRows ? last - start : kLogRows;
        double sum[kLogRows];
        double shift[kLogRows];  // x_t - max
        double kept[kLogRows];
        for (std::int64_t l = 0; l < count; ++l) {
            const std::int64_t t = p.target_index[start + l];
            const bool keep = t != p.ignore_index;
            const PlainRow row = keep ? plain_row(ctx, start + l, t) : PlainRow{1.0, 0.0};
            sum[l] = row.sum;
            shift[l] = row.shift;
            kept[l] = keep ? 1.0 : 0.0;
        }
        double loss[kLogRows];
        for (std::int64_t l = 0; l < count; ++l) {
            const double row_loss = -(shift[l] - log_double(sum[l]));
            loss[l] = kept[l] != 0.0 ? row_loss : 0.0;
        }
        for (std::int64_t l = 0; l < count; ++l) {
            p.row_loss[start + l] = static_cast<T>(loss[l]);
            total += loss[l];
        }
    }
    return total;
}

// scale[l] = the gradient's scale of row row0 + l (CrossEntropyProblem::grad_scale and grad_rows).
template <typename T>
void tile_scales(const CrossEntropyProblem<T>& p, std::int64_t row0, std::int64_t lanes, double* scale) {
    if (p.grad_rows == nullptr) {
        for (std::int64_t l = 0; l < lanes; ++l) scale[l] = p.grad_scale;
    } else {
        for (std::int64_t l = 0; l < lanes; ++l) scale[l] = p.grad_scale * static_cast<double>(p.grad_rows[row0 + l]);
    }
}

// What the target's own gradient of each lane of a tile is made from (see LossContext::target_grad).
template <typename T>
struct TargetGradLanes {
    const double* target_logit;
    const T* max;
    const double* log_sum;
    const double* a;         // the gradient's p_j coefficient
    const double* weight_t;  // the target's class weight (0 for an ignored row)
    const double* scale;
};

// out[l] = the target's own gradient of lane l, in double; b is the smoothing's e / C (0 without).
// Out of line, so that every tile computing it (loss_tile, binary_grad_tile) gets the same bits: the
// compiler's fused multiply-adds depend on the code around an inlined copy.
template <typename T>
[[gnu::noinline]] void tile_target_grads(const TargetGradLanes<T>& in, double b, double smoothing, std::int64_t lanes,
                                         double* out) {
    for (std::int64_t l = 0; l < lanes; ++l) {
        const double p_t = exp_double((in.target_logit[l] - static_cast<double>(in.max[l])) - in.log_sum[l]);
        const double b_t = b == 0.0 ? 0.0 : b * in.weight_t[l];
        out[l] = p_t * in.a[l] * in.scale[l] - (b_t + (1.0 - smoothing) * in.weight_t[l]) * in.scale[l];
    }
}

// The index targets of the tile after rows row0 .. row0 + lanes - 1, which follow these: fetched
// while this tile's exponentials run (measured: the tile otherwise waits for its targets, 7% of the
// time on 16x21x128x128).
template <typename T>
void prefetch_next_targets(const CrossEntropyProblem<T>& p, std::int64_t row0, std::int64_t lanes) {
    if (p.target_index == nullptr) return;
    const std::int64_t next = row0 + lanes;
    const std::int64_t rows = p.view.rows();
    if (next < rows) prefetch_range(p.target_index + next, 0, rows - next < lanes ? rows - next : lanes);
}

// The check of the index targets of rows row0 .. row0 + lanes - 1 into `check`, when not null, its
// first invalid one as a flat row (see CrossEntropyProblem::target_checks). Forced inline: called
// out of line, the two-class and segmentation losses measured 2-5% slower.
template <typename T>
FASTXENT_MATH void check_tile_targets(const CrossEntropyProblem<T>& p, std::int64_t classes, std::int64_t row0,
                                      std::int64_t lanes, TargetCheck* check) {
    if (check == nullptr) return;
    *check = check_target_block(p.target_index + row0, lanes, classes, p.ignore_index);
    if (check->first_invalid >= 0) check->first_invalid += row0;
}

// tile_target_classes of rows row0 .. row0 + lanes - 1, and their check into `check` when not null
// (its first invalid one as a flat row), as check_tile_targets's. Forced inline, as that.
template <typename T, typename I>
FASTXENT_MATH void tile_targets(const CrossEntropyProblem<T>& p, std::int64_t classes, std::int64_t row0,
                                std::int64_t lanes, I* target_class, double* kept, TargetCheck* check) {
    tile_target_classes(p.target_index + row0, lanes, classes, p.ignore_index, target_class, kept, check);
    if (check != nullptr && check->first_invalid >= 0) check->first_invalid += row0;
}

// A tile of `lanes` consecutive rows starting at `row0`: class c of lane l at x[c * stride + l], its
// probability target at y[c * y_stride + l], its gradient at grad[c * grad_stride + l]. Returns the
// sum of the tile's losses, added in a fixed order. Per-lane work is done in arrays so that it vectorises
// across rows; only the gradient's target scatters, and the target gathers above kSmallClasses
// classes, are scalar. `check`, when not null, receives the check of the tile's targets, its first
// invalid one as a flat row (see CrossEntropyProblem::target_checks). With kCopied (loss_copied_tile),
// the max pass copies the tile into `copy`, and the passes after it read the copy.
template <typename T, bool kCopied = false>
double loss_tile(const LossContext<T>& ctx, const T* x, std::int64_t stride, const T* y, std::int64_t y_stride,
                 T* grad, std::int64_t grad_stride, std::int64_t row0, std::int64_t lanes,
                 const TilePrefetch<T>& prefetch = TilePrefetch<T>{}, TargetCheck* check = nullptr,
                 T* copy = nullptr, bool stream = false) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    const std::int64_t classes = ctx.classes;
    // Only the tile's sum of losses is wanted, and every kept row adds its log(sum) once: the logs
    // are taken as logs of products (see kept_log_sum).
    const bool logs_as_product = p.target_index != nullptr && p.weight == nullptr && p.z_loss == 0.0 &&
                                 p.row_loss == nullptr && grad == nullptr && p.save_stats == nullptr &&
                                 p.saved_stats == nullptr && classes <= kMaxProductClasses;
    prefetch_next_targets(p, row0, lanes);
    // Note: a tile's gradient exponentials, computed once, as a row's (see row_exps_into): the sums
    // store their terms, fast_exp's, into the gradient, which is then made from them in place. So
    // everything else that reads the logits is done first: the gradient may be the logits themselves
    // (out=input, or a staging buffer). Saved statistics (the loss class) sum the same terms, so that
    // a gradient from them is the same to the last bit as the fused one. Only for tiles of
    // transposed rows (the class axis last, small_rows): a tile along an inner axis (columns), read
    // in place, has its classes a whole inner extent apart, and there the stored terms, written among
    // loads that far apart, contend with them for the same cache sets (measured: 15% slower on
    // 16x21x128x128 than computing the exponentials twice); a copied tile stores them in its own
    // copy instead (see the Note on a copied tile's gradient below). The choice depends on the
    // layout alone, not on staging, so that 16-bit logits give the gradient of their float32 copy.
    const bool stats_here = p.saved_stats == nullptr;
    const bool transposed = p.view.inner == 1;
    const bool exps_in_grad = stats_here && grad != nullptr && transposed;
    // A copied tile (kCopied) stores them in its copy instead, once the copy has been read (see the
    // Note on a copied tile's gradient below).
    const bool exps_in_copy = kCopied && stats_here && grad != nullptr;
    // The max and the target logits in one pass, for a tile of few classes.
    const bool max_with_targets = stats_here && p.target_index != nullptr && classes <= kSmallClasses;
    TileStats<T> tile;
    if (max_with_targets) {
        // Below, with the targets.
    } else if (stats_here) {
        if constexpr (kCopied) {
            tile_max_copy(x, stride, classes, lanes, tile.max, copy);
            x = copy;
            stride = kTileLanes;
        } else {
            tile_max(x, stride, classes, lanes, tile.max);
        }
    } else {
        load_tile_stats(p.saved_stats + row0, lanes, tile);
    }

    double dot[kTileLanes];    // S (smoothing) or sum_c u_c (x_c - max) (probability targets)
    double total[kTileLanes];  // U (probability targets)
    double loss[kTileLanes];
    const bool index_targets = p.target_index != nullptr;
    const double smoothing = ctx.smoothing;

    double target_logit[kTileLanes];
    double weight_t[kTileLanes];
    double kept[kTileLanes];  // 1 or 0: a double, so that the per-lane loops below vectorise
    std::int64_t target_class[kTileLanes];
    const bool smoothed_loss = index_targets && smoothing > 0.0 && ctx.needs_loss;
    if (index_targets) {
        // See the Note on index targets of a tile (row_engine.h).
        tile_target_classes(p.target_index + row0, lanes, classes, p.ignore_index, target_class, kept);
        check_tile_targets(p, classes, row0, lanes, check);
        if (max_with_targets) {
            std::int32_t small_class[kTileLanes];
            T logit[kTileLanes];
            for (std::int64_t l = 0; l < lanes; ++l) small_class[l] = static_cast<std::int32_t>(target_class[l]);
            if constexpr (kCopied) {
                tile_max_copy_and_target_logits(x, stride, classes, lanes, small_class, tile.max, logit, copy);
                x = copy;
                stride = kTileLanes;
            } else {
                tile_max_and_target_logits(x, stride, classes, lanes, small_class, tile.max, logit);
            }
            for (std::int64_t l = 0; l < lanes; ++l) target_logit[l] = static_cast<double>(logit[l]);
        } else {
            tile_target_logits(x, stride, classes, lanes, target_class, target_logit);
        }
        const T* weight = p.weight;
        for (std::int64_t l = 0; l < lanes; ++l) {
            const std::int64_t t = target_class[l];
            weight_t[l] = weight == nullptr ? kept[l] : t < 0 ? 0.0 : static_cast<double>(weight[t]);
        }
        if (smoothed_loss) tile_weighted_sum(x, stride, p.weight, classes, lanes, tile.max, dot);
    } else {
        tile_probability_sums(x, stride, y, y_stride, ctx.probability, classes, lanes, tile.max, dot, total);
    }

    if (exps_in_grad) {
        tile_sums<T, SumTerms::written_and_stored>(x, stride, classes, lanes, true, tile, prefetch, true, grad,
                                                   grad_stride);
    } else if (exps_in_copy) {
        tile_sums<T, SumTerms::written_and_stored>(x, stride, classes, lanes, true, tile, prefetch, true, copy,
                                                   kTileLanes);
    } else if (stats_here && (p.save_stats != nullptr || grad != nullptr)) {
        tile_sums<T, SumTerms::written>(x, stride, classes, lanes, grad != nullptr, tile, prefetch, true);
    } else if (stats_here) {
        tile_sums(x, stride, classes, lanes, false, tile, prefetch, !logs_as_product);
    }
    if (p.save_stats != nullptr) {
        for (std::int64_t l = 0; l < lanes; ++l) p.save_stats[row0 + l] = tile.row(l);
    }

    if (index_targets) {
        const double uniform = smoothing / static_cast<double>(classes);
        const double weight_total = ctx.weight_total;
        for (std::int64_t l = 0; l < lanes; ++l) {
            const double log_sum = tile.log_sum[l];
            const double log_prob_t = (target_logit[l] - static_cast<double>(tile.max[l])) - log_sum;
            double value = (1.0 - smoothing) * (-weight_t[l] * log_prob_t);
            if (smoothed_loss) value += uniform * negated_log_prob_sum(dot[l], weight_total, log_sum);
            loss[l] = kept[l] != 0.0 ? value : 0.0;
        }
    } else {
        for (std::int64_t l = 0; l < lanes; ++l) {
            loss[l] = negated_log_prob_sum(dot[l], total[l], tile.log_sum[l]);
        }
    }
    const double loss_sum = ordered_sum(loss, lanes) + (logs_as_product ? kept_log_sum(tile.sum, kept, lanes) : 0.0);
    if (p.row_loss != nullptr) {
        for (std::int64_t l = 0; l < lanes; ++l) p.row_loss[row0 + l] = static_cast<T>(loss[l]);
    }
    if (grad == nullptr) return loss_sum;

    // The gradient's per-lane scale (0 for an ignored row) and p_j coefficient a.
    double scale[kTileLanes];
    double a[kTileLanes];
    tile_scales(p, row0, lanes, scale);
    if (index_targets) {
        const double uniform_a = ctx.uniform_a();
        for (std::int64_t l = 0; l < lanes; ++l) {
            scale[l] = kept[l] != 0.0 ? scale[l] : 0.0;
            a[l] = (1.0 - smoothing) * weight_t[l] + uniform_a;
        }
    } else {
        for (std::int64_t l = 0; l < lanes; ++l) a[l] = total[l];
    }
    if (p.z_loss != 0.0) {
        const double twice_z = 2.0 * p.z_loss;
        for (std::int64_t l = 0; l < lanes; ++l) {
            a[l] += twice_z * (static_cast<double>(tile.max[l]) + tile.log_sum[l]);
        }
    }

    T coefficient[kTileLanes];  // a * scale / sum
    T lane_scale[kTileLanes];
    for (std::int64_t l = 0; l < lanes; ++l) {
        coefficient[l] = static_cast<T>(a[l] * scale[l] * tile.inverse[l]);
        lane_scale[l] = static_cast<T>(scale[l]);
    }
    // The target's own gradient in double (see LossContext::target_grad), written by the gradient's
    // pass in place of its class's value: target_lane[l] is lane l's target class, or -1 for none.
    // An ignored lane (kept_lane[l] 0) gets 0 for every class, whatever its exponentials.
    T target_value[kTileLanes];
    std::int32_t target_lane[kTileLanes];
    std::int32_t kept_lane[kTileLanes];
    if (index_targets) {
        double target_grad[kTileLanes];
        tile_target_grads(TargetGradLanes<T>{target_logit, tile.max, tile.log_sum, a, weight_t, scale},
                          smoothing > 0.0 ? ctx.grad_b() : 0.0, smoothing, lanes, target_grad);
        for (std::int64_t l = 0; l < lanes; ++l) {
            target_value[l] = static_cast<T>(target_grad[l]);
            target_lane[l] = static_cast<std::int32_t>(kept[l] != 0.0 ? target_class[l] : -1);
            kept_lane[l] = kept[l] != 0.0 ? 1 : 0;
        }
    }
    // Note: a copied tile's gradient. A tile along an inner axis that is copied (kCopied) has its
    // gradient's exponentials stored by the sums into its copy, after every pass that reads the copy,
    // and its large gradient streamed from there (see the Note on streaming stores, stream.h). Its
    // sums then add the written terms (fast_exp's), and so, for the same bits, do those of every
    // other tile along an inner axis with a gradient or saved statistics (the loss class). Measured
    // against computing the exponentials twice with ordinary stores, paired in one process, 2
    // threads: the gradient of 16 x 21 x 128 x 128 float32 logits in 0.85-0.87 of the time (0.82-0.87
    // on one thread), of 8 x 19 x 256 x 256 in 0.85; tiles not copied, whose sums now take fast_exp's
    // terms instead of the cheaper ones of exp_in_sum, 1.04-1.05 (4 x 150 x 128 x 128,
    // 16384 x 10 x 16 x 16). Without streaming (a caller's out= array off a 64-byte line), the
    // copied tile measured 0.94-1.11 of the earlier time.
    //
    // The gradient from e(c, l) = exp(x - max) of lane l of class c: stored by the sums, or computed
    // here (from saved statistics, or on a tile along an inner axis that is not copied). Written
    // where it goes, then the targets' own values and the ignored lanes' zeros over it; or, streamed
    // (a copied tile, see the Note on streaming stores, stream.h), each class's lanes whole, those
    // values folded in by selects, into row_buffer and from there by streaming stores. The selects
    // stay out of the other tiles: a tile not copied, whose exponentials are computed here, took
    // 1.13 times as long with them (16 x 21 x 100 x 100).
    const bool streamed = kCopied && stream && streams_whole_lines(grad, lanes, grad_stride);
    T row_buffer[kTileLanes];
    auto write_grad = [&](auto e) FASTXENT_INLINE_LAMBDA {
        for (std::int64_t c = 0; c < classes; ++c) {
            T* out_row = grad + c * grad_stride;
            T* to = streamed ? row_buffer : out_row;
            if (index_targets) {
                // Without smoothing b_w is 0 and is left out: 0 times an infinite scale would be NaN
                // (see the Note on a non-finite scale in row_engine.h).
                const T b_w = static_cast<T>(ctx.grad_b_weighted(c));
                const std::int32_t cls = static_cast<std::int32_t>(c);
                if (smoothing == 0.0 && streamed) {
                    for (std::int64_t l = 0; l < lanes; ++l) {
                        const T value = e(c, l) * coefficient[l];
                        to[l] = target_lane[l] == cls ? target_value[l] : kept_lane[l] != 0 ? value : T(0);
                    }
                } else if (smoothing == 0.0) {
                    for (std::int64_t l = 0; l < lanes; ++l) to[l] = e(c, l) * coefficient[l];
                } else {
                    // b_w * scale rounded on its own first: a multiply-add contracted one way in the
                    // streamed loop and the other way in the plain one gave them different bits.
                    T uniform_part[kTileLanes];
                    for (std::int64_t l = 0; l < lanes; ++l) uniform_part[l] = b_w * lane_scale[l];
                    if (streamed) {
                        for (std::int64_t l = 0; l < lanes; ++l) {
                            const T value = e(c, l) * coefficient[l] - uniform_part[l];
                            to[l] = target_lane[l] == cls ? target_value[l] : kept_lane[l] != 0 ? value : T(0);
                        }
                    } else {
                        for (std::int64_t l = 0; l < lanes; ++l) to[l] = e(c, l) * coefficient[l] - uniform_part[l];
                    }
                }
            } else {
                const T* target = y + c * y_stride;
                const T w = p.weight == nullptr ? T(1) : p.weight[c];
                const ProbabilityWeights<T>& u = ctx.probability;
                for (std::int64_t l = 0; l < lanes; ++l) {
                    to[l] = e(c, l) * coefficient[l] - w * (u.keep * target[l] + u.uniform) * lane_scale[l];
                }
            }
            if (streamed) stream_store(out_row, row_buffer, lanes);
        }
    };
    if (exps_in_grad || exps_in_copy) {
        const T* terms = exps_in_grad ? grad : copy;
        const std::int64_t terms_stride = exps_in_grad ? grad_stride : kTileLanes;
        write_grad([terms, terms_stride](std::int64_t c, std::int64_t l) { return terms[c * terms_stride + l]; });
    } else {
        const T* max = tile.max;
        write_grad([x, stride, max](std::int64_t c, std::int64_t l) { return fast_exp(x[c * stride + l], max[l]); });
    }
    if (index_targets && !streamed) {
        for (std::int64_t l = 0; l < lanes; ++l) {
            if (target_lane[l] >= 0) {
                grad[target_lane[l] * grad_stride + l] = target_value[l];
            } else if (kept_lane[l] == 0) {
                for (std::int64_t c = 0; c < classes; ++c) grad[c * grad_stride + l] = T(0);
            }
        }
    }
    return loss_sum;
}

// loss_tile of a tile along an inner axis that copies_tile, with a buffer for its copy (see the Note
// on copies of a tile along an inner axis in row_engine.h): loss_tile's instance of its own
// (kCopied), so that the code of every other tile is as it was. Out of line, so that the buffer is
// no part of the kernel's frame, and flattened: with the loss_tile it calls left to the inliner, the
// loss of tiles that are not copied (4 x 3 x 262144) measured 3% slower.
//
// GCC's -Waggressive-loop-optimizations warns, here alone, of undefined behaviour at iteration 2^61 - 1
// of the remainder loops of loss_tile's helpers; the tiles here are whole (lanes == kTileLanes, as
// copies_tile asks, which GCC knows at the one call), so those loops never run. Silenced for this
// function alone.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
#endif
template <typename T>
[[gnu::noinline, gnu::flatten]] double loss_copied_tile(const LossContext<T>& ctx, const T* x, std::int64_t stride,
                                                        const T* y, std::int64_t y_stride, T* grad,
                                                        std::int64_t grad_stride, std::int64_t row0, std::int64_t lanes,
                                                        const TilePrefetch<T>& prefetch, TargetCheck* check) {
    T copy[kSmallClasses * kTileLanes];
    return loss_tile<T, true>(ctx, x, stride, y, y_stride, grad, grad_stride, row0, lanes, prefetch, check, copy,
                              ctx.stream_grad);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Note: two classes. The loss of a binary classifier's rows (two classes, class indices, no class
// weights, smoothing, z-loss or cap) is loss_tile's work fused into one pass over the
// rows, read in place: per row, the pair of logits, their max, the sum of exponentials, the target's
// logit and the row's loss, eight rows at a time. loss_tile's separate passes over its tile arrays
// (the transpose, then max, targets, target logits, sums and losses, each stored and reloaded) cost
// more than the exponentials at C = 2. Only one exponential is taken: the max's term is exactly 1
// (exp_float_in_sum(0) is 1 to the bit), so the sum is 1 + exp(d) with d = (a - max) + (b - max),
// which is the other logit minus the max, and NaN whenever loss_tile's sum is NaN (a NaN logit, an
// infinite max). The max is the larger of the two; loss_tile's differs only on rows with a NaN,
// whose loss is NaN either way (or 0 when ignored). Every other operation and its order is
// loss_tile's (see the Notes on index targets of a tile and on logs as a product in row_engine.h),
// so the results are loss_tile's to the last bit. Measured on 1048576 x 2 float32 logits, against
// loss_tile in the same process: the mean in 0.53 of its time on one thread and 0.40 on two, the
// row losses (reduction none, a log per row) in 0.81 and 0.69.
//
// The gradient too (binary_grad_tile): loss_tile's with its exponentials stored in the gradient
// (the terms fast_exp(x, max), their sum's log, its inverse and the target's p_t in double), with
// the same operations in the same order, and the target's gradient from the same out-of-line code
// (tile_target_grads), so the fused gradient is still the same to the last bit as the loss class's
// backward from saved statistics (which takes loss_tile). It runs in a few short passes, not one:
// a log and two exponentials in double, one after the other in one pass, leave each iteration
// waiting on its chain of dependent operations. The rows are computed into the item's arrays first
// and then written out, so that the gradient may be the logits themselves (out=input) without the
// loop falling back to scalar code for the overlap. Measured on 1048576 x 2 float32 logits against
// loss_tile: cross_entropy_with_grad in 0.68 of its time on one thread and on two.
//
// Rows of up to kSmallClasses classes with the same options and no gradient, other than binary_tile's
// (few_class_tile: three or more classes, or two not contiguous), still take a transposed tile, whose max
// and target logits come from one pass of register blocks. Of loss_tile's other passes over its per-row
// arrays, those the options make trivial (class weights of 1, logs of 0, the target logits widened to
// double) are left out, and the losses and the factors of the logs are made in one pass after the
// exponentials. The operations that remain, and their order, are loss_tile's, so are the results. Measured
// against loss_tile in the same process: the 1048576 x 10 mean in 0.92-0.95 of its time (one and two
// threads), 1048576 x 4 in 0.91, the row losses (reduction none) in 0.95-0.98.

// Note: staged tiles of plain rows. 16-bit logits are staged (converted to float in the thread's
// buffer, staging.h), and their tiles took loss_tile even where the options are plain_index_options'
// (default options, class indices), for which binary_tile, binary_grad_tile and few_class_tile
// exist: those need nothing but the tile's values. So a staged tile with those options takes them
// too: two contiguous classes are converted into the staging buffer as rows and take binary_tile,
// or binary_grad_tile with a gradient (made over the buffer and stored from there, rounded once to
// the gradient's dtype); up to kSmallClasses classes without a gradient take few_class_tile on the
// transposed tile. Their results are loss_tile's to the last bit (see the Note above), so a 16-bit
// call still gives the bits of a float32 call on the same values; the two-class log_softmax does
// the same (softmax.cpp). Measured against the previous build, paired in one process, float16:
// 1048576 x 2 mean in 0.47 of the time on two threads (0.59 on one), gradient 0.54 (0.76),
// log_softmax 0.48 (0.64), row losses 0.81 (half of what remains is NumPy's cast of the float32
// row losses to float16); 1048576 x 10 mean 0.88 (0.90), row losses 0.94; 65536 x 20 mean 0.91;
// bfloat16 alike.

// Rows for binary_tile (binary_grad_tile with a gradient), and rows for few_class_tile, read in
// place or staged (see the Note on staged tiles of plain rows).
template <typename T>
bool binary_rows(const LossContext<T>& ctx) {
    return ctx.classes == 2 && ctx.problem.view.outer_stride == 2 && plain_index_options(ctx);
}

template <typename T>
bool few_class_rows(const LossContext<T>& ctx) {
    return ctx.classes <= kSmallClasses && !ctx.grad.present() && !binary_rows(ctx) && plain_index_options(ctx);
}

// Which target values keep a row of a two-class tile. A row is kept when its target is 0 or 1 and
// not ignore_index: any other target is either ignore_index or invalid, and an invalid one fails the
// call. So the tiles compare only the low 32 bits of a target (SSE2 has no 64-bit compare; a target
// whose low bits alone say 0 or 1 is invalid, found by the check).
struct BinaryTargets {
    bool class0;  // a target of 0 keeps its row
    bool class1;
    // Whether a row with target t (its low 32 bits) is kept.
    FASTXENT_MATH bool keeps(std::int32_t t) const { return ((t == 0) & class0) | ((t == 1) & class1); }
};

// Row l of a binary_tile or few_class_tile, from its target logit minus its max (`shift`) and its sum
// of exponentials, as loss_tile's: with kRowLosses its loss, also stored in row_losses[l]; without,
// its loss without the log of the sum, and the sum as the factor of the logs (1 for an ignored row).
// Each select is between values already computed (selects between computations became masked
// stores behind branches). Forced inline, so that the loops calling it vectorise.
template <bool kRowLosses, typename T>
FASTXENT_MATH void plain_row_loss(double shift, double sum, bool keep, std::int64_t l, double* loss, double* factor,
                                  T* row_losses) {
    if constexpr (kRowLosses) {
        const double row_loss = -(shift - log_double(sum));
        loss[l] = keep ? row_loss : 0.0;
        row_losses[l] = static_cast<T>(loss[l]);
    } else {
        const double row_factor = keep ? sum : 1.0;
        const double row_loss = keep ? -shift : 0.0;
        factor[l] = row_factor;
        loss[l] = row_loss;
    }
}

// The sum of a tile's losses from plain_row_loss's arrays.
template <bool kRowLosses>
double plain_tile_loss(const double* loss, const double* factor, std::int64_t lanes) {
    if constexpr (kRowLosses) {
        return ordered_sum(loss, lanes);
    } else {
        return ordered_sum(loss, lanes) + log_of_products(factor, lanes);
    }
}

// The tile's targets checked into `check` (as loss_tile's, when not null), and which values keep a row.
template <typename T>
BinaryTargets binary_targets(const CrossEntropyProblem<T>& p, std::int64_t row0, std::int64_t lanes,
                             TargetCheck* check) {
    check_tile_targets(p, 2, row0, lanes, check);
    return BinaryTargets{p.ignore_index != 0, p.ignore_index != 1};
}

// Rows row0 .. row0 + lanes - 1 (lanes <= kTileLanes) of a binary_rows problem, whose logits are at x
// (row row0's): the sum of their losses, and with kRowLosses the row losses themselves; `check` as
// loss_tile's.
template <typename T, bool kRowLosses>
double binary_tile(const CrossEntropyProblem<T>& p, const T* x, std::int64_t row0, std::int64_t lanes,
                   TargetCheck* check) {
    const BinaryTargets kept_classes = binary_targets(p, row0, lanes, check);
    const std::int64_t* targets = p.target_index + row0;
    T* row_losses = kRowLosses ? p.row_loss + row0 : nullptr;
    double factor[kTileLanes];  // the sum of exponentials, or 1 for an ignored row (without kRowLosses)
    double loss[kTileLanes];    // without kRowLosses, without the log of the sum
    for (std::int64_t l = 0; l < lanes; ++l) {
        const T first = x[2 * l];
        const T second = x[2 * l + 1];
        const T max = second > first ? second : first;
        const T sum = two_class_sum(first, second, max);
        // The rest in double, each select between values already computed (selects between
        // computations became masked stores behind branches). The logit of any target but 1 is the
        // first: an ignored row's is unused, and an invalid target fails the call (loss_tile reads 0
        // there; either way nothing is read outside the row).
        const std::int32_t t = static_cast<std::int32_t>(targets[l]);
        const double logit = t == 1 ? static_cast<double>(second) : static_cast<double>(first);
        const double shift = logit - static_cast<double>(max);
        const double sum_wide = static_cast<double>(sum);
        const bool keep = kept_classes.keeps(t);
        plain_row_loss<kRowLosses>(shift, sum_wide, keep, l, loss, factor, row_losses);
    }
    return plain_tile_loss<kRowLosses>(loss, factor, lanes);
}

// Rows row0 .. row0 + lanes - 1 (lanes <= kTileLanes) of a few_class_rows problem, transposed into
// `tile` (classes kTileLanes apart): as binary_tile (see the Note on two classes).
template <typename T, bool kRowLosses>
double few_class_tile(const CrossEntropyProblem<T>& p, const T* tile, std::int64_t classes, std::int64_t row0,
                      std::int64_t lanes, const TilePrefetch<T>& prefetch, TargetCheck* check) {
    prefetch_next_targets(p, row0, lanes);
    std::int32_t target_class[kTileLanes];
    double kept[kTileLanes];
    tile_targets(p, classes, row0, lanes, target_class, kept, check);
    TileStats<T> stats;
    T logit[kTileLanes];
    tile_max_and_target_logits(tile, kTileLanes, classes, lanes, target_class, stats.max, logit);
    tile_sum_exp(tile, kTileLanes, classes, lanes, stats.max, stats.sum, prefetch);
    T* row_losses = kRowLosses ? p.row_loss + row0 : nullptr;
    double factor[kTileLanes];  // the sum of exponentials, or 1 for an ignored row (without kRowLosses)
    double loss[kTileLanes];    // without kRowLosses, without the log of the sum
    for (std::int64_t l = 0; l < lanes; ++l) {
        const double shift = static_cast<double>(logit[l]) - static_cast<double>(stats.max[l]);
        plain_row_loss<kRowLosses>(shift, stats.sum[l], kept[l] != 0.0, l, loss, factor, row_losses);
    }
    return plain_tile_loss<kRowLosses>(loss, factor, lanes);
}

// binary_tile and few_class_tile, with the row losses when the problem asks for them.
template <typename T>
double binary_tile_loss(const CrossEntropyProblem<T>& p, const T* x, std::int64_t row0, std::int64_t lanes,
                        TargetCheck* check) {
    return p.row_loss == nullptr ? binary_tile<T, false>(p, x, row0, lanes, check)
                                 : binary_tile<T, true>(p, x, row0, lanes, check);
}

template <typename T>
double few_class_tile_loss(const CrossEntropyProblem<T>& p, const T* tile, std::int64_t classes, std::int64_t row0,
                           std::int64_t lanes, const TilePrefetch<T>& prefetch, TargetCheck* check) {
    return p.row_loss == nullptr ? few_class_tile<T, false>(p, tile, classes, row0, lanes, prefetch, check)
                                 : few_class_tile<T, true>(p, tile, classes, row0, lanes, prefetch, check);
}

// Rows row0 .. row0 + lanes - 1 (lanes <= kTileLanes) of a binary_rows problem with a gradient, whose
// logits are at x and gradient goes to grad (row row0's; grad may be x): their gradient, their row
// losses if asked for, and the sum of their losses; `check` as loss_tile's.
template <typename T>
double binary_grad_tile(const CrossEntropyProblem<T>& p, const T* x, T* grad, std::int64_t row0, std::int64_t lanes,
                        TargetCheck* check) {
    const BinaryTargets kept_classes = binary_targets(p, row0, lanes, check);
    const std::int64_t* targets = p.target_index + row0;
    double scale[kTileLanes];
    tile_scales(p, row0, lanes, scale);
    // In passes, each short (see the Note on two classes): one pass of the log and both exponentials
    // took 1.7 times as long on 4096 x 2 logits.
    T max[kTileLanes];
    T grad0[kTileLanes];  // the two exponentials of each row, then their gradients (but the target's)
    T grad1[kTileLanes];
    double sum[kTileLanes];
    double target_logit[kTileLanes];
    double log_sum[kTileLanes];
    double kept[kTileLanes];  // the target's weight and the gradient's a
    double loss[kTileLanes];
    for (std::int64_t l = 0; l < lanes; ++l) {
        const T first = x[2 * l];
        const T second = x[2 * l + 1];
        const T row_max = second > first ? second : first;
        const T term0 = fast_exp(first, row_max);
        const T term1 = fast_exp(second, row_max);
        T row_sum = T(0);
        row_sum += term0;
        row_sum += term1;
        const std::int32_t t = static_cast<std::int32_t>(targets[l]);
        const bool keep = kept_classes.keeps(t);
        max[l] = row_max;
        grad0[l] = term0;
        grad1[l] = term1;
        sum[l] = static_cast<double>(row_sum);
        target_logit[l] = t == 1 ? static_cast<double>(second) : static_cast<double>(first);
        kept[l] = keep ? 1.0 : 0.0;
        scale[l] = keep ? scale[l] : 0.0;
    }
    for (std::int64_t l = 0; l < lanes; ++l) log_sum[l] = log_double(sum[l]);
    for (std::int64_t l = 0; l < lanes; ++l) {
        const T coefficient = static_cast<T>(kept[l] * scale[l] * exp_double(-log_sum[l]));
        grad0[l] *= coefficient;
        grad1[l] *= coefficient;
        const double log_prob_t = (target_logit[l] - static_cast<double>(max[l])) - log_sum[l];
        loss[l] = kept[l] != 0.0 ? -log_prob_t : 0.0;
    }
    double target_grad[kTileLanes];
    tile_target_grads(TargetGradLanes<T>{target_logit, max, log_sum, kept, kept, scale}, 0.0, 0.0, lanes, target_grad);
    for (std::int64_t l = 0; l < lanes; ++l) {
        const std::int32_t t = static_cast<std::int32_t>(targets[l]);
        const bool keep = kept[l] != 0.0;
        const T target = static_cast<T>(target_grad[l]);
        const T value0 = t == 0 ? target : grad0[l];
        const T value1 = t == 1 ? target : grad1[l];
        grad[2 * l] = keep ? value0 : T(0);
        grad[2 * l + 1] = keep ? value1 : T(0);
    }
    if (p.row_loss != nullptr) {
        for (std::int64_t l = 0; l < lanes; ++l) p.row_loss[row0 + l] = static_cast<T>(loss[l]);
    }
    return ordered_sum(loss, lanes);
}

// Note: a split row's stored exponentials. With a gradient, index targets and no smoothing, each
// chunk's exponentials against its own max m_k (the written ones, fast_exp's) are stored in the
// gradient while they are summed, and the gradient is then each term times
// a * scale * exp(m_k - max - log_sum) (chunk_factor, row_engine.h): one multiplication per element
// instead of a second exponential of every logit against the row's max. Loss and gradient come from
// one pass of exponentials, as for whole rows; the loss class's backward takes this path too (saved
// statistics are not used here), so it still gives the fused gradient's bits. A staged call (16-bit
// logits, a cap) computes the same terms again in its gradient's pass and multiplies them alike, so
// that a 16-bit call still gives the bits of a float32 call on the same values. The factor is formed
// in double and rounded once. Where the row's max is not finite, or its sum is NaN, the factor is NaN
// and so is every element, as with a second exponential. With an infinite or NaN scale the stored
// terms are not used (an element whose term is 0 against the row's max but not against its chunk's
// would give inf instead of the NaN of 0 * inf). Softmax does the same (softmax.cpp). Measured
// against the second exponential, paired in one process: the gradient of 4 x 256000 float32 logits
// in 0.78 of the time on one thread, 0.82-0.84 on two (8 x 131072: 0.80); the loss class's forward
// and backward in 0.93-0.96. A float16 gradient, whose sums now take the written exponentials too,
// takes 1.06 of its time.

// Rows cut into chunks (kernels.h, kSplitClasses): each phase (maxima and sums, then sums of logits
// when needed, then the gradient) runs over every chunk of every row in parallel, and the chunks'
// maxima and sums are combined per row in chunk order. Saved statistics are not used here:
// recomputing them gives the same values, and the probability-target gradient needs the chunk sums
// anyway. A staged call reads each chunk into its thread's buffer in each phase.
template <typename T>
void cross_entropy_split(const LossContext<T>& ctx, std::int64_t chunks, int threads) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    const std::int64_t rows = p.view.rows();
    const std::int64_t classes = ctx.classes;
    const std::int64_t items = rows * chunks;
    double* chunk_max = p.workspace;
    double* chunk_sum = chunk_max + items;
    double* chunk_dot = chunk_sum + items;
    double* chunk_total = chunk_dot + items;
    RowStats stats[kSplitMaxRows];
    double total[kSplitMaxRows];
    // Read before the gradient may overwrite the logits (out=input): the target's logit, and its
    // cap's slope.
    double target_logit[kSplitMaxRows];
    T target_slope[kSplitMaxRows];
    const bool index_targets = p.target_index != nullptr;
    const bool smoothed_loss = index_targets && ctx.smoothing > 0.0 && ctx.needs_loss;
    // No sums of logits. Decided by the options alone, not by whether a loss is wanted, so that the
    // loss class's backward computes the same statistics as the forward with the gradient.
    const bool one_pass = index_targets && ctx.smoothing == 0.0;
    const std::int64_t second_pass_items = one_pass ? 0 : items;
    const bool staged = ctx.logits.staged();
    const bool capped = p.softcap != 0.0;
    const std::int64_t per_thread = staged ? staging_size(p.view, capped) : 0;
    // Which exponentials the chunks sum (see the Note on which exponentials a row sums), and whether
    // they are stored in the gradient (see the Note on a split row's stored exponentials).
    const bool written_terms = one_pass && (ctx.grad.present() || p.save_stats != nullptr);
    bool chunk_terms = written_terms && ctx.grad.present();
    for (std::int64_t row = 0; row < rows && chunk_terms; ++row) chunk_terms = std::isfinite(ctx.row_scale(row));
    const bool stored_terms = chunk_terms && !staged && p.grad != nullptr;
    if (index_targets) {
        for (std::int64_t row = 0; row < rows; ++row) {
            if (ctx.ignored(row)) continue;
            T logit;
            ctx.logits.load(p.view.row_offset(row) + p.target_index[row], 1, &logit, &target_slope[row]);
            target_logit[row] = static_cast<double>(logit);
        }
    }

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const StagingBuffers<T> buffer = staged ? thread_staging(p.staging, per_thread, capped)
                                                : StagingBuffers<T>{nullptr, nullptr};
        // Each chunk's max and, without sums of logits, its sum against it (see the Note on a chunk's
        // sum in row_engine.h), prefetching the next chunk during the exponentials. Sums of logits are
        // taken against the row's max, in a second pass.
#pragma omp for schedule(static)
        for (std::int64_t item = 0; item < items; ++item) {
            const auto [row, first, count] = split_chunk(item, chunks, classes);
            if (ctx.ignored(row)) {
                chunk_max[item] = chunk_sum[item] = 0.0;
                continue;
            }
            const T* x = ctx.logits.read(p.view.row_offset(row) + first, count, buffer.values, nullptr);
            const T max = row_max(x, count);
            chunk_max[item] = static_cast<double>(max);
            if (one_pass) {
                const NextRow next = next_chunk(ctx.logits, p.view, item, items, chunks);
                if (written_terms) {
                    T* out = stored_terms ? p.grad + row * classes + first : nullptr;
                    chunk_sum[item] = row_exps_into(x, out, count, chunk_shift(max), next);
                } else {
                    chunk_sum[item] = row_sum_exp(x, count, chunk_shift(max), next);
                }
            }
        }
#pragma omp for schedule(static)
        for (std::int64_t item = 0; item < second_pass_items; ++item) {
            const auto [row, first, count] = split_chunk(item, chunks, classes);
            if (ctx.ignored(row)) continue;
            const double max = split_row_max(chunk_max, row, chunks);
            const T* x = ctx.logits.read(p.view.row_offset(row) + first, count, buffer.values, nullptr);
            const T shift = static_cast<T>(max);
            chunk_sum[item] = row_sum_exp(x, count, shift);
            if (smoothed_loss) {
                const T* weight = p.weight == nullptr ? nullptr : p.weight + first;
                chunk_dot[item] = row_weighted_sum(x, weight, count, shift, ctx.probability.infinite_weight);
            }
            if (!index_targets) {
                ProbabilityWeights<T> u = ctx.probability;
                if (u.weight != nullptr) u.weight += first;
                row_probability_sums(x, p.target_prob + row * classes + first, u, count, shift, chunk_dot[item],
                                     chunk_total[item]);
            }
        }
#pragma omp single
        for (std::int64_t row = 0; row < rows; ++row) {
            const double max = split_row_max(chunk_max, row, chunks);
            double sum = 0.0;
            double dot = 0.0;
            total[row] = 0.0;
            for (std::int64_t c = 0; c < chunks; ++c) {
                if (!one_pass) sum += chunk_sum[row * chunks + c];
                if (smoothed_loss || !index_targets) dot += chunk_dot[row * chunks + c];
                if (!index_targets) total[row] += chunk_total[row * chunks + c];
            }
            if (one_pass) sum = split_row_sum(chunk_max, chunk_sum, row, chunks, max);
            double loss = 0.0;
            if (!ctx.ignored(row)) {
                stats[row] = RowStats{max, std::log(sum)};
                if (p.save_stats != nullptr) p.save_stats[row] = stats[row];
                if (index_targets) {
                    const std::int64_t t = p.target_index[row];
                    loss = ctx.index_loss(stats[row], target_logit[row], ctx.class_weight(t), dot);
                } else {
                    loss = negated_log_prob_sum(dot, total[row], stats[row].log_sum);
                }
            }
            if (p.row_loss != nullptr) p.row_loss[row] = static_cast<T>(loss);
            if (p.partial_sums != nullptr) p.partial_sums[row] = loss;
        }
        if (ctx.grad.present()) {
#pragma omp for schedule(static)
            for (std::int64_t item = 0; item < items; ++item) {
                const auto [row, first, count] = split_chunk(item, chunks, classes);
                const std::int64_t offset = row * classes + first;
                if (ctx.ignored(row)) {
                    ctx.grad.zero(offset, count);
                    continue;
                }
                const double scale = ctx.row_scale(row);
                const T coefficient =
                    chunk_terms ? static_cast<T>(ctx.grad_a(ctx.class_weight(p.target_index[row]), stats[row]) * scale *
                                                 chunk_factor(stats[row], chunk_max[item]))
                                : T(0);
                if (stored_terms) {
                    T* grad = p.grad + offset;
                    for (std::int64_t i = 0; i < count; ++i) grad[i] *= coefficient;
                    continue;
                }
                const T* x = ctx.logits.read(p.view.row_offset(row) + first, count, buffer.values, buffer.slope);
                T* grad = staged ? buffer.values : p.grad + offset;
                const T* weight = p.weight == nullptr ? nullptr : p.weight + first;
                if (chunk_terms) {
                    // The stored terms' gradient, from the terms computed again (a staged call: grad is
                    // x, each element read before it is written, as omp simd states).
                    const T shift = chunk_shift(static_cast<T>(chunk_max[item]));
#pragma omp simd
                    for (std::int64_t i = 0; i < count; ++i) grad[i] = fast_exp(x[i], shift) * coefficient;
                } else if (index_targets) {
                    const double weight_t = ctx.class_weight(p.target_index[row]);
                    write_index_grad(x, weight, grad, count, stats[row], static_cast<T>(ctx.grad_a(weight_t, stats[row])),
                                     static_cast<T>(ctx.grad_b()), static_cast<T>(scale));
                } else {
                    ProbabilityWeights<T> u = ctx.probability;
                    u.weight = weight;
                    write_probability_grad(x, p.target_prob + offset, u, grad, count, stats[row],
                                           static_cast<T>(total[row] + ctx.z_loss_a(stats[row])), static_cast<T>(scale));
                }
                if (staged) ctx.grad.store(offset, grad, buffer.slope, count);
            }
            if (index_targets) {
#pragma omp single
                for (std::int64_t row = 0; row < rows; ++row) {
                    if (ctx.ignored(row)) continue;
                    const std::int64_t t = p.target_index[row];
                    const T value = static_cast<T>(ctx.target_grad(stats[row], target_logit[row], t, ctx.row_scale(row)));
                    ctx.grad.store(row * classes + t, &value, capped ? &target_slope[row] : nullptr, 1);
                }
            }
        }
    }
}

// One work item of a staged call: each row (rows), tile (columns) or transposed tile (small_rows)
// is read into the thread's staging buffer, computed there, and its gradient stored from there.
// Not inlined, so that the float32 path around it compiles as it does without it (measured: the
// inlined copy cost 8% on a 32 x 100 call).
template <typename T>
[[gnu::noinline]] double loss_item_staged(const LossContext<T>& ctx, const WorkPlan& plan, const ItemRows& range,
                        const StagingBuffers<T>& buffer, TargetCheck* check) {
    const CrossEntropyProblem<T>& p = ctx.problem;
    const ClassAxisView& view = p.view;
    const std::int64_t classes = ctx.classes;
    const bool has_grad = ctx.grad.present();
    T* values = buffer.values;
    T* slope = has_grad ? buffer.slope : nullptr;
    T* grad = has_grad ? values : nullptr;
    double item_sum = 0.0;
    if (plan.strategy == Strategy::rows) {
        for (std::int64_t row = range.first; row < range.last; ++row) {
            ctx.logits.load(view.row_offset(row), classes, values, slope);
            item_sum += loss_row(ctx, values, row, grad, next_row(ctx.logits, view, row));
            if (has_grad) ctx.grad.store(row * classes, values, slope, classes);
        }
    } else if (plan.strategy == Strategy::columns) {
        const std::int64_t dense_offset = range.outer * classes * view.inner + range.lane0;
        ctx.logits.load_tile(view.row_offset(range.outer) + range.lane0, view.class_stride, classes, range.lanes,
                             values, slope);
        item_sum = loss_tile(ctx, values, kTileLanes, p.target_prob == nullptr ? nullptr : p.target_prob + dense_offset,
                             view.inner, grad, kTileLanes, range.first, range.lanes, TilePrefetch<T>{}, check);
        if (has_grad) ctx.grad.store_tile(dense_offset, view.inner, values, slope, classes, range.lanes);
    } else if (binary_rows(ctx)) {
        // See the Note on staged tiles of plain rows.
        ctx.logits.load(range.first * 2, range.lanes * 2, values, nullptr);
        if (has_grad) {
            item_sum = binary_grad_tile(p, values, values, range.first, range.lanes, check);
            ctx.grad.store(range.first * 2, values, nullptr, range.lanes * 2);
        } else {
            item_sum = binary_tile_loss(p, values, range.first, range.lanes, check);
        }
    } else if (few_class_rows(ctx)) {
        ctx.logits.load_transposed(view.row_offset(range.first), view.outer_stride, classes, range.lanes, values,
                                   nullptr);
        item_sum = few_class_tile_loss(p, values, classes, range.first, range.lanes, TilePrefetch<T>{}, check);
    } else {
        T tile_target[kTileClasses * kTileLanes];
        ctx.logits.load_transposed(view.row_offset(range.first), view.outer_stride, classes, range.lanes, values,
                                   slope);
        if (p.target_prob != nullptr) {
            transpose_into_tile(p.target_prob + range.first * classes, classes, classes, range.lanes, tile_target);
        }
        item_sum = loss_tile(ctx, values, kTileLanes, tile_target, kTileLanes, grad, kTileLanes, range.first,
                             range.lanes, TilePrefetch<T>{}, check);
        if (has_grad) ctx.grad.store_transposed(range.first * classes, values, slope, classes, range.lanes);
    }
    return item_sum;
}

template <typename T>
void cross_entropy_kernel(const CrossEntropyProblem<T>& problem) {
    const ClassAxisView& view = problem.view;
    const WorkPlan plan = plan_work(view);
    const std::int64_t rows = view.rows();
    const std::int64_t classes = view.classes;
    const LossContext<T> ctx(problem);
    const bool staged = ctx.logits.staged();
    const bool capped = problem.softcap != 0.0;
    if (classes == 0 && problem.target_prob != nullptr) {
        // Rows of no classes (index targets must then all be ignored, and take the paths below): each
        // loss is an empty sum, -0 as PyTorch's; the statistics are an empty row's (logsumexp -inf);
        // a gradient has no element.
        const double infinity = std::numeric_limits<double>::infinity();
        for (std::int64_t row = 0; row < rows; ++row) {
            if (problem.row_loss != nullptr) problem.row_loss[row] = T(-0.0);
            if (problem.save_stats != nullptr) problem.save_stats[row] = RowStats{-infinity, -infinity};
        }
        for (std::int64_t item = 0; problem.partial_sums != nullptr && item < plan.items; ++item) {
            problem.partial_sums[item] = -0.0;
        }
        return;
    }
    const std::int64_t chunks = problem.workspace == nullptr ? 0 : split_chunks(view);
    if (chunks > 0) {
        cross_entropy_split(ctx, chunks, staged_threads(rows * chunks, view.size(), staged, problem.staging_threads));
        return;
    }
    const int threads = staged_threads(plan.items, view.size(), staged, problem.staging_threads);
    const std::int64_t per_thread = staged ? staging_size(view, capped) : 0;
    const bool in_place = reads_in_place(ctx);
    // A large gradient of transposed tiles is streamed (see the Note on streaming stores, stream.h).
    const bool stream_tiles = problem.grad != nullptr && streams_tiles<T>(view);
    const bool binary = in_place && binary_rows(ctx);
    const bool few_classes = in_place && few_class_rows(ctx);
    const bool plain_rows = plain_whole_rows(ctx);
    const bool grouped = grouped_rows(ctx);

    const auto item_loss = [&](std::int64_t item) {
        double item_sum = 0.0;
        const ItemRows range = item_rows(plan, view, item);
        TargetCheck* check = problem.target_checks == nullptr ? nullptr : problem.target_checks + item;
        if (staged) {
            item_sum = loss_item_staged(ctx, plan, range, thread_staging(problem.staging, per_thread, capped), check);
        } else if (plan.strategy == Strategy::rows && grouped) {
            item_sum = grouped_grad_rows(ctx, range.first, range.last);
        } else if (plan.strategy == Strategy::rows && plain_rows) {
            item_sum = problem.row_loss == nullptr ? plain_rows_loss(ctx, range.first, range.last)
                                                   : plain_row_losses(ctx, range.first, range.last);
        } else if (plan.strategy == Strategy::rows) {
            for (std::int64_t row = range.first; row < range.last; ++row) {
                item_sum += loss_row(ctx, problem.input + view.row_offset(row), row,
                                     problem.grad == nullptr ? nullptr : problem.grad + row * classes,
                                     next_row(ctx.logits, view, row));
            }
        } else if (plan.strategy == Strategy::columns) {
            const std::int64_t outer = range.outer;
            const std::int64_t lane0 = range.lane0;
            const std::int64_t lanes = range.lanes;
            const std::int64_t dense_offset = outer * classes * view.inner + lane0;
            const T* x = problem.input + view.row_offset(outer) + lane0;
            const T* y = problem.target_prob == nullptr ? nullptr : problem.target_prob + dense_offset;
            T* grad = problem.grad == nullptr ? nullptr : problem.grad + dense_offset;
            const TilePrefetch<T> prefetch = next_tile(problem.input, plan, view, item);
            if (copies_tile<T>(view.class_stride, classes, lanes)) {
                item_sum = loss_copied_tile(ctx, x, view.class_stride, y, view.inner, grad, view.inner,
                                            outer * view.inner + lane0, lanes, prefetch, check);
            } else {
                item_sum = loss_tile(ctx, x, view.class_stride, y, view.inner, grad, view.inner,
                                     outer * view.inner + lane0, lanes, prefetch, check);
            }
        } else if (binary && problem.grad != nullptr) {
            item_sum = binary_grad_tile(problem, problem.input + range.first * 2, problem.grad + range.first * 2,
                                        range.first, range.lanes, check);
        } else if (binary) {
            item_sum = binary_tile_loss(problem, problem.input + range.first * 2, range.first, range.lanes, check);
        } else if (few_classes) {
            T tile_in[kTileClasses * kTileLanes];
            transpose_into_tile(problem.input + view.row_offset(range.first), view.outer_stride, classes,
                                range.lanes, tile_in);
            const TilePrefetch<T> prefetch = next_tile(problem.input, plan, view, item);
            item_sum = few_class_tile_loss(problem, tile_in, classes, range.first, range.lanes, prefetch, check);
        } else {
            const std::int64_t first = range.first;
            const std::int64_t lanes = range.lanes;
            T tile_in[kTileClasses * kTileLanes];
            T tile_target[kTileClasses * kTileLanes];
            T tile_grad[kTileClasses * kTileLanes];
            transpose_into_tile(problem.input + view.row_offset(first), view.outer_stride, classes, lanes,
                                tile_in);
            if (problem.target_prob != nullptr) {
                transpose_into_tile(problem.target_prob + first * classes, classes, classes, lanes, tile_target);
            }
            item_sum = loss_tile(ctx, tile_in, kTileLanes, tile_target, kTileLanes,
                                 problem.grad == nullptr ? nullptr : tile_grad, kTileLanes, first, lanes,
                                 next_tile(problem.input, plan, view, item), check);
            if (stream_tiles) {
                stream_from_tile(tile_grad, classes, lanes, problem.grad + first * classes, tile_in);
            } else if (problem.grad != nullptr) {
                transpose_from_tile(tile_grad, classes, lanes, problem.grad + first * classes,
                                    next_tile_rows(problem.grad, first, classes, view.rows()));
            }
        }
        if (problem.partial_sums != nullptr) problem.partial_sums[item] = item_sum;
    };
    // Each thread's streaming stores are fenced once, after its last item (see the Note on streaming
    // stores, stream.h).
    for_each_item(plan.items, threads, item_loss, [&] {
        if (ctx.stream_grad || stream_tiles) stream_fence();
    });
}

}  // namespace

void register_loss_kernels(KernelTable& table) {
    table.cross_entropy_float = cross_entropy_kernel<float>;
    table.cross_entropy_double = cross_entropy_kernel<double>;
}

}  // namespace FASTXENT_ISA
}  // namespace fastxent
