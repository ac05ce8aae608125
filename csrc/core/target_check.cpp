// The check of index targets (targets.h), compiled once per instruction set: the comparisons of
// 64-bit integers vectorise only from AVX2 on (SSE2 has none), and on 1048576 x 2 logits the
// scalar check took a sixth of a loss's time.
#include "kernels.h"
#include "parallel.h"

namespace fastxent {
namespace FASTXENT_ISA {

namespace {

// Targets per block of check_targets.
constexpr std::int64_t kTargetBlock = 1 << 14;

// Invalid and kept targets of one block: counts without branches, so that the loop vectorises; the
// position of the first invalid one is searched for only in a block that has one.
TargetCheck check_block(const std::int64_t* target, std::int64_t count, std::int64_t classes,
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
    std::int64_t first = -1;
    for (std::int64_t i = 0; i < count && invalid > 0; ++i) {
        const std::int64_t t = target[i];
        if ((t < 0 || t >= classes) && t != ignore_index) {
            first = i;
            break;
        }
    }
    return TargetCheck{first, kept};
}

TargetCheck check_targets_kernel(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                                 std::int64_t ignore_index) {
    if (count <= kTargetBlock) return check_block(target, count, classes, ignore_index);
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
            const TargetCheck block = check_block(target + first, size, classes, ignore_index);
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
