#include "nll.h"

namespace fastxent {

template <typename T>
double nll_loss(const T* log_probs, const ClassAxisView& view, const std::int64_t* target, const T* weight,
                std::int64_t ignore_index, T* row_loss) {
    double total = 0.0;
    std::int64_t row = 0;
    for (std::int64_t outer = 0; outer < view.outer; ++outer) {
        const T* block = log_probs + outer * view.outer_stride;
        for (std::int64_t lane = 0; lane < view.inner; ++lane, ++row) {
            const std::int64_t t = target[row];
            double loss = 0.0;
            if (t != ignore_index) {
                const double w = weight == nullptr ? 1.0 : static_cast<double>(weight[t]);
                loss = -w * static_cast<double>(block[t * view.class_stride + lane]);
            }
            if (row_loss != nullptr) row_loss[row] = static_cast<T>(loss);
            total += loss;
        }
    }
    return total;
}

template double nll_loss<float>(const float*, const ClassAxisView&, const std::int64_t*, const float*,
                                std::int64_t, float*);
template double nll_loss<double>(const double*, const ClassAxisView&, const std::int64_t*, const double*,
                                 std::int64_t, double*);

}  // namespace fastxent
