// The one exported entry point of an instruction set: fills the kernel table with the kernels that
// this instruction set's copy of each kernel file registers. Compiled once per instruction set.
#include "kernels.h"
#include "row_engine.h"

namespace fastxent {
namespace FASTXENT_ISA {

void register_softmax_kernels(KernelTable& table);  // softmax.cpp
void register_loss_kernels(KernelTable& table);     // loss.cpp
void register_score_kernels(KernelTable& table);    // score.cpp
void register_target_kernels(KernelTable& table);   // target_check.cpp
void register_convert_kernels(KernelTable& table);  // convert.cpp

void register_kernels(KernelTable& table) {
    table.isa = FASTXENT_ISA_NAME;
    table.tile_classes_float = transposed_tile_classes<float>();
    table.tile_classes_double = transposed_tile_classes<double>();
    register_softmax_kernels(table);
    register_loss_kernels(table);
    register_score_kernels(table);
    register_target_kernels(table);
    register_convert_kernels(table);
}

}  // namespace FASTXENT_ISA
}  // namespace fastxent
