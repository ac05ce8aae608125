// The check of index targets (targets.h), compiled once per instruction set: the comparisons of
// 64-bit integers vectorise only from AVX2 on (SSE2 has none), and on 1048576 x 2 logits the
// scalar check took a sixth of a loss's time.
#include <vector>

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
    // Each block's first invalid target and count, combined in block order.
    std::vector<TargetCheck> checks(static_cast<std::size_t>(blocks));
    for_each_item(blocks, threads, [&](std::int64_t b) {
        const std::int64_t first = b * kTargetBlock;
        const std::int64_t size = count - first < kTargetBlock ? count - first : kTargetBlock;
        const TargetCheck block = check_target_block(target + first, size, classes, ignore_index);
        checks[static_cast<std::size_t>(b)] =
            TargetCheck{block.first_invalid >= 0 ? first + block.first_invalid : -1, block.kept};
    });
    for (const TargetCheck& block : checks) {
        if (total.first_invalid < 0) total.first_invalid = block.first_invalid;
        total.kept += block.kept;
    }
    return total;
}

}  // namespace

void register_target_kernels(KernelTable& table) { table.check_targets = check_targets_kernel; }

}  // namespace FASTXENT_ISA
}  // namespace fastxent
