// The check of index targets (targets.h), compiled once per instruction set: the comparisons of
// 64-bit integers vectorise only from AVX2 on (SSE2 has none), and on 1048576 x 2 logits the
// scalar check took a sixth of a loss's time.
#include "kernels.h"
#include "parallel.h"
#include "row_engine.h"

namespace fastxent {
namespace FASTXENT_ISA {

namespace {

// Targets per block of check_targets.
constexpr std::int64_t kTargetBlock = 1 << 14;

TargetCheck check_targets_kernel(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                                 std::int64_t ignore_index) {
    if (count <= kTargetBlock) return check_target_block(target, count, classes, ignore_index);
    const std::int64_t blocks = (count + kTargetBlock - 1) / kTargetBlock;
    const int threads = threads_for(blocks, count);
    TargetCheck total{-1, 0};
    // Each thread takes a contiguous range of blocks (schedule static) and keeps its first invalid
    // target and its count; the threads' results are combined in block order.
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        TargetCheck mine{-1, 0};
#pragma omp for schedule(static) nowait
        for (std::int64_t b = 0; b < blocks; ++b) {
            const std::int64_t first = b * kTargetBlock;
            const std::int64_t size = count - first < kTargetBlock ? count - first : kTargetBlock;
            const TargetCheck block = check_target_block(target + first, size, classes, ignore_index);
            if (mine.first_invalid < 0 && block.first_invalid >= 0) mine.first_invalid = first + block.first_invalid;
            mine.kept += block.kept;
        }
#pragma omp critical(fastxent_target_check)
        {
            if (mine.first_invalid >= 0 && (total.first_invalid < 0 || mine.first_invalid < total.first_invalid)) {
                total.first_invalid = mine.first_invalid;
            }
            total.kept += mine.kept;
        }
    }
    return total;
}

}  // namespace

void register_target_kernels(KernelTable& table) { table.check_targets = check_targets_kernel; }

}  // namespace FASTXENT_ISA
}  // namespace fastxent
