// Reuse of freed host memory between and within LRP passes (the CPU counterpart of the CUDA
// engine's caching allocator, src/cuda/kernels/memory.cu).
//
// A relevance pass allocates every activation and relevance array afresh (numpy arrays, from
// lrpfast's kernels and numpy alike). With glibc's defaults the large ones are mmapped and
// unmapped each time, and every first touch of a page is a page fault plus the kernel zeroing
// it: ~10% of a CaffeNet batch-16 pass here (bench/README.md). With reuse on, blocks up to
// 32 MiB come from the heap, and up to 1 GiB of freed memory stays in the process for the next
// allocation instead of being returned to the system at once. The peak memory of a pass is
// unchanged; between passes the process keeps its freed blocks (at most 1 GiB beyond them).
#pragma once

namespace lrpfast {

// Applies or withdraws the malloc settings (glibc mallopt: M_MMAP_THRESHOLD 32 MiB,
// M_TRIM_THRESHOLD 1 GiB; off: glibc's static defaults, 128 KiB each). Returns false where it
// cannot (not glibc), doing nothing.
bool set_memory_reuse(bool on);
bool memory_reuse();  // the current setting

// Returns the freed memory the process holds (the heap's free pages, glibc malloc_trim) to the
// system, whatever the setting. Returns false where it cannot (not glibc).
bool release_memory();

// At import: on, unless $LRPFAST_MEMORY_REUSE is "0"/"off" or the user set glibc's own
// MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ (their choice stands).
void init_memory_reuse();

}  // namespace lrpfast
