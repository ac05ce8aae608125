#include "dispatch.h"

#include <cstdlib>
#include <stdexcept>

namespace fastxent {
namespace {

struct IsaEntry {
    const char* name;
    void (*register_kernels)(KernelTable&);
    bool (*supported)();
};

bool always() { return true; }

#if defined(FASTXENT_X86_ISAS)
// __builtin_cpu_supports also checks that the operating system saves the wider registers. The AVX2
// and AVX-512 builds also convert float16 with F16C (see staging.h).
bool has_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
const IsaEntry kIsas[] = {
    {"baseline", baseline::register_kernels, always},
    {"avx2", avx2::register_kernels, has_avx2},
    {"avx512", avx512::register_kernels, has_avx512},
};
#else
const IsaEntry kIsas[] = {
    {"baseline", baseline::register_kernels, always},
};
#endif

// The names of kIsas, comma-separated: those this CPU supports, or all of them.
std::string isa_names(bool supported_only) {
    std::string names;
    for (const IsaEntry& entry : kIsas) {
        if (supported_only && !entry.supported()) continue;
        if (!names.empty()) names += ", ";
        names += entry.name;
    }
    return names;
}

KernelTable choose() {
    const char* forced = std::getenv("FASTXENT_ISA");
    const IsaEntry* chosen = nullptr;
    if (forced != nullptr && forced[0] != '\0') {
        for (const IsaEntry& entry : kIsas) {
            if (std::string(entry.name) == forced) chosen = &entry;
        }
        if (chosen == nullptr) {
            throw std::runtime_error(std::string("FASTXENT_ISA=") + forced +
                                     " is not an instruction set of this build (choose from: " +
                                     isa_names(false) + "; this CPU supports " + supported_isas() + ")");
        }
        if (!chosen->supported()) {
            throw std::runtime_error(std::string("FASTXENT_ISA=") + forced +
                                     " is not supported by this CPU (supported: " + supported_isas() + ")");
        }
    } else {
        for (const IsaEntry& entry : kIsas) {
            if (entry.supported()) chosen = &entry;
        }
    }
    KernelTable table;
    chosen->register_kernels(table);
    return table;
}

}  // namespace

const KernelTable& kernels() {
    static const KernelTable table = choose();
    return table;
}

std::string supported_isas() { return isa_names(true); }

}  // namespace fastxent
