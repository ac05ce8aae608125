// Checks and sums over index targets that need no logits: run before any kernel writes an output.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace fastxent {

// One pass over the targets (TargetCheck, kernels.h), by the chosen instruction set's kernel
// (target_check.cpp): spread over threads for long arrays.
TargetCheck check_targets(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                          std::int64_t ignore_index);

// D = sum_i [t_i != ignore_index] * w[t_i], in double, in row order; every target must be valid.
template <typename T>
double target_weight_sum(const std::int64_t* target, std::int64_t count, const T* weight,
                         std::int64_t ignore_index);

}  // namespace fastxent
