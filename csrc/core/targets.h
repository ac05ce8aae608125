// Checks and sums over index targets that need no logits: run before any kernel writes an output.
#pragma once

#include <cstdint>

namespace fastxent {

// The position of the first target outside [0, classes) that is not ignore_index, or -1.
std::int64_t find_invalid_target(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                                 std::int64_t ignore_index);

// D = sum_i [t_i != ignore_index] * w[t_i] (w = 1 when weight is null), in double, in row order.
template <typename T>
double target_weight_sum(const std::int64_t* target, std::int64_t count, const T* weight,
                         std::int64_t ignore_index);

}  // namespace fastxent
