#include "kernels/host_memory.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace lrpfast {
namespace {

std::atomic<bool> g_on{false};

bool env_off(const char* name) {
  const char* v = std::getenv(name);
  return v && (!std::strcmp(v, "0") || !std::strcmp(v, "off") || !std::strcmp(v, "false"));
}

}  // namespace

bool set_memory_reuse(bool on) {
#if defined(__GLIBC__)
  const int mmap_threshold = on ? 32 << 20 : 128 << 10;
  const int trim_threshold = on ? 1 << 30 : 128 << 10;
  if (mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1 ||
      mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1)
    return false;
  g_on.store(on);
  return true;
#else
  (void)on;
  return false;
#endif
}

bool memory_reuse() { return g_on.load(); }

bool release_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
  return true;
#else
  return false;
#endif
}

void init_memory_reuse() {
  if (env_off("LRPFAST_MEMORY_REUSE")) return;
  for (const char* v : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"})
    if (std::getenv(v)) return;
  set_memory_reuse(true);
}

}  // namespace lrpfast
