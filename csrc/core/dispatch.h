// The choice of instruction set: the best one this CPU supports, unless FASTXENT_ISA names another.
#pragma once

#include <string>

#include "kernels.h"

namespace fastxent {

// The kernels of the chosen instruction set. The choice is made on the first call (thread-safe) and
// then fixed; it throws std::runtime_error when FASTXENT_ISA names an unknown or unsupported one.
const KernelTable& kernels();

// Instruction sets compiled into this build and supported by this CPU, best last ("baseline" first).
std::string supported_isas();

}  // namespace fastxent
