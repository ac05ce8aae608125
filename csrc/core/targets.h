// Checks and sums over index targets that need no logits: run before any kernel writes an output.
#pragma once

#include <cstdint>

namespace fastxent {

// One pass over the targets: the position of the first target outside [0, classes) that is not
// ignore_index (-1 if none), and how many targets are not ignore_index. Spread over threads for long
// arrays (in fixed blocks, so the result never depends on the thread count).
struct TargetCheck {
    std::int64_t first_invalid;
    std::int64_t kept;
};
TargetCheck check_targets(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                          std::int64_t ignore_index);

// D = sum_i [t_i != ignore_index] * w[t_i], in double, in row order; every target must be valid.
template <typename T>
double target_weight_sum(const std::int64_t* target, std::int64_t count, const T* weight,
                         std::int64_t ignore_index);

}  // namespace fastxent
