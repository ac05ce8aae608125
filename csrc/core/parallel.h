// The thread count used by the kernels, and when a job is worth spreading over threads.
#pragma once

#include <cstdint>

namespace fastxent {

// The number of threads the kernels may use (initially OpenMP's default, itself set by
// OMP_NUM_THREADS or the machine's cores). Thread-safe.
int max_threads();
// Sets it; n < 1 is rejected by the caller. Without OpenMP every count behaves as 1.
void set_max_threads(int n);
bool openmp_enabled();

// Threads for a job of `items` independent work items over `elements` array elements: 1 for small
// jobs, where starting the team would cost more than it saves, and 1 in a child process forked after
// the parent used OpenMP (libgomp's thread pool does not survive fork; see parallel.cpp).
int threads_for(std::int64_t items, std::int64_t elements);

}  // namespace fastxent
