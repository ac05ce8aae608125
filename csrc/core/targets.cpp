#include "targets.h"

#include <vector>

#include "parallel.h"

namespace fastxent {

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

}  // namespace

TargetCheck check_targets(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                          std::int64_t ignore_index) {
    if (count <= kTargetBlock) return check_block(target, count, classes, ignore_index);
    const std::int64_t blocks = (count + kTargetBlock - 1) / kTargetBlock;
    std::vector<TargetCheck> results(static_cast<std::size_t>(blocks));
    const int threads = threads_for(blocks, count);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t first = b * kTargetBlock;
        const std::int64_t size = count - first < kTargetBlock ? count - first : kTargetBlock;
        results[static_cast<std::size_t>(b)] = check_block(target + first, size, classes, ignore_index);
    }
    TargetCheck total{-1, 0};
    for (std::int64_t b = 0; b < blocks; ++b) {
        const TargetCheck& block = results[static_cast<std::size_t>(b)];
        if (total.first_invalid < 0 && block.first_invalid >= 0) total.first_invalid = b * kTargetBlock + block.first_invalid;
        total.kept += block.kept;
    }
    return total;
}

template <typename T>
double target_weight_sum(const std::int64_t* target, std::int64_t count, const T* weight,
                         std::int64_t ignore_index) {
    double total = 0.0;
    for (std::int64_t i = 0; i < count; ++i) {
        if (target[i] != ignore_index) total += static_cast<double>(weight[target[i]]);
    }
    return total;
}

template double target_weight_sum<float>(const std::int64_t*, std::int64_t, const float*, std::int64_t);
template double target_weight_sum<double>(const std::int64_t*, std::int64_t, const double*, std::int64_t);

}  // namespace fastxent
