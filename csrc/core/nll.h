// nll_loss: the loss of log-probabilities that are already computed (one element read per row).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace fastxent {

// row_loss[r] = -[t_r != ignore_index] * w[t_r] * log_probs[r, t_r] (when row_loss is set); returns
// their sum, added in row order in double. Targets must have been validated.
template <typename T>
double nll_loss(const T* log_probs, const ClassAxisView& view, const std::int64_t* target, const T* weight,
                std::int64_t ignore_index, T* row_loss);

}  // namespace fastxent
