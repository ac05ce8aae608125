#include "kernels.h"

namespace fastxent {
namespace {

// A rows-strategy work item holds about this many elements (whole rows, at least one).
constexpr std::int64_t kItemElements = 1 << 15;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace

WorkPlan plan_work(const ClassAxisView& view) {
    if (view.inner > 1) {
        return WorkPlan{Strategy::columns, kTileLanes, view.outer * ceil_div(view.inner, kTileLanes)};
    }
    const std::int64_t tile_classes = view.tile_classes < kTileClasses ? view.tile_classes : kTileClasses;
    if (view.classes <= tile_classes) {
        return WorkPlan{Strategy::small_rows, kTileLanes, ceil_div(view.rows(), kTileLanes)};
    }
    std::int64_t rows_per_item = kItemElements / view.classes;
    if (rows_per_item < 1) rows_per_item = 1;
    return WorkPlan{Strategy::rows, rows_per_item, ceil_div(view.rows(), rows_per_item)};
}

std::int64_t staging_size(const ClassAxisView& view, bool capped, bool split) {
    std::int64_t size = view.classes;
    if (split && split_chunks(view) > 0) {
        size = kSplitChunk;
    } else if (plan_work(view).strategy != Strategy::rows) {
        size = view.classes * kTileLanes;
    }
    return capped ? 2 * size : size;
}

std::int64_t split_chunks(const ClassAxisView& view) {
    if (view.inner != 1 || view.classes < kSplitClasses || view.rows() > kSplitMaxRows) return 0;
    return ceil_div(view.classes, kSplitChunk);
}

}  // namespace fastxent
