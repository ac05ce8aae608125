// The problems the kernels solve, and the table of kernels one instruction set provides.
//
// Every array is seen as (outer, classes, inner): the class axis is the middle one, whatever axis it
// was in the caller's array. The innermost axis has unit stride; the two others have arbitrary element
// strides, so (N, C), (C,), (N, C, d1..dk) and (batch, seq, vocab) with the class axis last are all
// read in place, without a transposed copy. Outputs are always C-contiguous.
#pragma once

#include <cstdint>

namespace fastxent {

// Up to this many classes, the target logits of a tile are gathered by selects, and a tile along an
// inner axis may be copied (row_engine.h); and up to this many, every instruction set transposes a
// contiguous class axis in tiles (ClassAxisView::tile_classes).
constexpr std::int64_t kSmallClasses = 32;
// The most classes any instruction set transposes in tiles (see the Note on how many classes a
// transposed tile takes, row_engine.h): the kernels' tile buffers hold this many classes.
constexpr std::int64_t kTileClasses = 64;
// Lanes of a column tile (a multiple of every vector width).
constexpr std::int64_t kTileLanes = 128;
// Results of at least this many bytes are written by streaming stores where the kernels can (see the
// Note on streaming stores, stream.h), and the library allocates its own such results on 64-byte
// lines (result_memory.h): about half the last-level cache of the 2-core machine of the README's
// figures, above which a result is unlikely to be still in cache when it is read.
constexpr std::int64_t kStreamResultBytes = std::int64_t{16} << 20;
// The cache line those results start on, and that streaming stores write whole.
constexpr std::int64_t kLineBytes = 64;

struct ClassAxisView {
    std::int64_t outer = 1;
    std::int64_t classes = 1;
    std::int64_t inner = 1;
    std::int64_t outer_stride = 1;  // elements between consecutive outer positions
    std::int64_t class_stride = 1;  // elements between consecutive classes (the inner stride is 1)
    // Up to how many classes a contiguous class axis is transposed in tiles (plan_work, capped at
    // kTileClasses): the kernels' own choice for their type (KernelTable::tile_classes_float and
    // _double), set by the caller, so that the caller and the kernel cut the view alike.
    std::int64_t tile_classes = kSmallClasses;
    // Rows in blocks (block_rows 0: none), for a view whose axes before the class axis collapse to
    // two strides rather than one, such as logits[:, :-1] of (batch, seq, vocab) logits: row r starts
    // at (r / block_rows) * block_stride + (r % block_rows) * outer_stride. Only with inner == 1 and
    // more than kTileClasses classes, where every kernel takes whole rows (plan_work's rows, or a
    // split row), never tiles of rows at a constant stride.
    std::int64_t block_rows = 0;
    std::int64_t block_stride = 0;

    std::int64_t rows() const { return outer * inner; }
    // The offset of outer position `row`'s first element.
    std::int64_t row_offset(std::int64_t row) const {
        if (block_rows == 0) return row * outer_stride;
        return (row / block_rows) * block_stride + (row % block_rows) * outer_stride;
    }
    std::int64_t size() const { return outer * classes * inner; }
};

enum class SoftmaxOp { log_softmax, softmax, logsumexp };

// The 16-bit formats a float kernel reads and writes in place of float (see staging.h).
enum class HalfFormat : std::uint8_t { float16, bfloat16 };

// Staged calls (16-bit logits, or a soft cap) need a staging buffer of this many T per thread: one
// row, tile or chunk of the view (`split`: a kernel that splits rows, see split_chunks), twice that
// with the cap's derivative. The buffer holds `staging_threads` of them, and a kernel never runs
// more threads than that.
std::int64_t staging_size(const ClassAxisView& view, bool capped, bool split = true);

template <typename T>
struct SoftmaxProblem {
    const T* input = nullptr;
    ClassAxisView view;
    SoftmaxOp op = SoftmaxOp::log_softmax;
    // log_softmax, softmax: C-contiguous (outer, classes, inner); logsumexp: C-contiguous (outer, inner).
    T* output = nullptr;
    double* workspace = nullptr;  // split_workspace_size(view) doubles

    // 16-bit logits, read instead of `input` (T is float), and a 16-bit output written instead of
    // `output` (log_softmax, softmax); both in `half_format`. Either needs the staging buffer.
    const std::uint16_t* input_half = nullptr;
    std::uint16_t* output_half = nullptr;
    HalfFormat half_format = HalfFormat::float16;
    T* staging = nullptr;
    int staging_threads = 0;
};

// Per-row statistics saved by a forward pass so that a backward pass needs one read of the logits:
// log_softmax = (x - max) - log_sum, in that order.
struct RowStats {
    double max;
    double log_sum;
};

// The check of index targets: the position of the first target outside [0, classes) that is not
// ignore_index (-1 if none), and how many targets are not ignore_index. Counted in fixed blocks, so
// the result never depends on the thread count.
struct TargetCheck {
    std::int64_t first_invalid;
    std::int64_t kept;
};

template <typename T>
struct CrossEntropyProblem {
    const T* input = nullptr;
    ClassAxisView view;

    // Exactly one of the two targets is set.
    const std::int64_t* target_index = nullptr;  // C-contiguous (outer, inner), validated (see target_checks)
    const T* target_prob = nullptr;              // C-contiguous (outer, classes, inner)

    const T* weight = nullptr;  // (classes,) or null for all ones
    std::int64_t ignore_index = -100;
    double label_smoothing = 0.0;
    // The auxiliary loss z_loss * logsumexp^2 of every kept row: the kernels add its gradient,
    // 2 * z_loss * logsumexp * p_j; its value is formed by the caller from the saved statistics.
    double z_loss = 0.0;

    // Outputs, each optional.
    T* row_loss = nullptr;            // (outer, inner): the unreduced loss
    T* grad = nullptr;                // C-contiguous like the input
    double grad_scale = 1.0;          // every row's gradient is multiplied by this ...
    const T* grad_rows = nullptr;     // ... and by grad_rows[row] when set (reduction "none")
    RowStats* save_stats = nullptr;   // (rows): the statistics of this pass
    const RowStats* saved_stats = nullptr;  // (rows): reuse these instead of recomputing (gradient only)

    // Filled by the kernel: the sum of the row losses in a fixed order, one partial per work item
    // (see plan_work), so the total does not depend on the thread count.
    double* partial_sums = nullptr;
    double* workspace = nullptr;  // split_workspace_size(view) doubles
    // Index targets are checked by the caller, or, where targets_checked_by_kernel(*this) holds, by
    // the kernel: then this holds one TargetCheck per work item, filled in item order. The caller
    // combines them and, if a target is invalid, raises and discards every result (the row losses
    // and partial sums are then meaningless).
    TargetCheck* target_checks = nullptr;

    // The soft cap: the logits pass through softcap * tanh(x / softcap) before everything above
    // (0: none); the gradient is with respect to the uncapped logits, and saved statistics are those
    // of the capped ones.
    double softcap = 0.0;
    // 16-bit logits, read instead of `input` (T is float); a 16-bit gradient, written instead of
    // `grad`; both in `half_format`. A cap or 16-bit logits need the staging buffer.
    const std::uint16_t* input_half = nullptr;
    std::uint16_t* grad_half = nullptr;
    HalfFormat half_format = HalfFormat::float16;
    T* staging = nullptr;
    int staging_threads = 0;
};

// The scoring problems (score.h); declared here for the table.
template <typename T>
struct ScoreProblem;
template <typename T>
struct ScoreSpansProblem;

struct KernelTable {
    const char* isa = "";
    void (*softmax_float)(const SoftmaxProblem<float>&) = nullptr;
    void (*softmax_double)(const SoftmaxProblem<double>&) = nullptr;
    void (*cross_entropy_float)(const CrossEntropyProblem<float>&) = nullptr;
    void (*cross_entropy_double)(const CrossEntropyProblem<double>&) = nullptr;
    void (*score_float)(const ScoreProblem<float>&) = nullptr;
    void (*score_double)(const ScoreProblem<double>&) = nullptr;
    void (*score_spans_float)(const ScoreSpansProblem<float>&) = nullptr;
    void (*score_spans_double)(const ScoreSpansProblem<double>&) = nullptr;
    TargetCheck (*check_targets)(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                                 std::int64_t ignore_index) = nullptr;
    // out[i] = values[i] rounded to `format` (to nearest even, as NumPy's cast; see half.h), i < count.
    void (*float_to_half)(const float* values, std::uint16_t* out, std::int64_t count, HalfFormat format) = nullptr;
    // ClassAxisView::tile_classes for float and double views.
    std::int64_t tile_classes_float = kSmallClasses;
    std::int64_t tile_classes_double = kSmallClasses;
};

// How a view is cut into work items. It depends on the view only, never on the thread count: the
// per-item partial sums are added in item order, so reductions are identical for any thread count.
enum class Strategy {
    rows,        // the class axis is contiguous: one row at a time, vectorised along the classes
    columns,     // inner > 1: a tile of rows at a time, vectorised across rows along the inner axis
    small_rows,  // contiguous class axis, few classes: a tile of rows transposed, then as columns
};

struct WorkPlan {
    Strategy strategy;
    std::int64_t rows_per_item;  // rows: rows in one item; columns/small_rows: lanes (rows) in a tile
    std::int64_t items;
};

WorkPlan plan_work(const ClassAxisView& view);

// Whether a cross-entropy kernel may check the index targets itself (target_checks): its rows are
// tiles, which read each target once and never read through an invalid one (see the Note on index
// targets of a tile in row_engine.h), and nothing else reads through targets (class weights) or is
// written where an invalid target would spoil the caller's data (a gradient, statistics).
template <typename T>
bool targets_checked_by_kernel(const CrossEntropyProblem<T>& p) {
    return p.target_index != nullptr && p.weight == nullptr && p.grad == nullptr && p.grad_half == nullptr &&
           p.save_stats == nullptr && p.saved_stats == nullptr && plan_work(p.view).strategy != Strategy::rows;
}

// Few rows of very many classes (4 x 256000): the rows strategy would leave threads idle, so each
// row is cut into chunks of kSplitChunk classes, and every phase (max, sums, outputs) runs over all
// chunks of all rows in parallel; the chunks' partial results are combined per row in chunk order.
// Chosen from the view alone (never from the thread count), so results stay thread-independent.
constexpr std::int64_t kSplitClasses = 1 << 16;
constexpr std::int64_t kSplitMaxRows = 16;
constexpr std::int64_t kSplitChunk = 1 << 14;  // a multiple of the block of sums in row_engine.h
// Chunks per row when the view's rows are split (0 when they are not), and the doubles of
// workspace the kernels then need (CrossEntropyProblem::workspace, SoftmaxProblem::workspace).
std::int64_t split_chunks(const ClassAxisView& view);
inline std::int64_t split_workspace_size(const ClassAxisView& view) { return 4 * view.rows() * split_chunks(view); }

// One entry point per instruction set; each fills the table with its kernels.
namespace baseline { void register_kernels(KernelTable& table); }
namespace avx2 { void register_kernels(KernelTable& table); }
namespace avx512 { void register_kernels(KernelTable& table); }

}  // namespace fastxent
