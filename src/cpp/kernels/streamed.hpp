// Products whose B is a large matrix streamed from memory once, and whose A is a thin batch of
// rows: the fully connected layers (B = the weight matrix, A = a batch of inputs or signals).
//
// Why not BLAS: OpenBLAS packs all of B on every call and, with the few rows of A that an LRP
// batch has, runs at the speed of that packing (~10 GB/s per core here; CaffeNet's fc6 weights
// are 151 MB). These kernels read B once, tile by tile, with software prefetch, and broadcast
// A's few values against it; from one row of A up to a few dozen they are 1.3-2.5x faster than
// OpenBLAS, at 256 rows within ~15% (bench/README.md, "fully connected products").
//
// Every element of C is ONE chain of fused multiply-adds over k = 0 .. K-1 in order, from +0,
// whatever M, the thread count or the tiling: a row of C is bit-identical whether its row of A
// comes alone or in any batch. The portable twins (AVX2 + FMA, generic C++) compute the same
// chains, so they give the same bits as the AVX-512 kernels on every machine.
//
// nn skips the rows of B whose column of A is zero in every row of the call (a ReLU's switched-off
// outputs, a one-class seed's other classes), so those rows are never read: such a term adds +-0
// to its chain, which changes no value, and every sum gets +0 added at the end (a sum that
// underflowed to -0 is +0, whichever zero terms its chain held), so the bits do not depend on
// which rows a call skipped. (An infinite or NaN weight in a skipped row does not reach C.)
#pragma once

namespace lrpfast {

// C[M,N] = A[M,K] B[K,N]; all row-major with row strides lda, ldb, ldc (backward of a fully
// connected layer: dx (N,K) = dy (N,O) w (O,K)).
void gemm_streamed_nn(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                      float* C, int ldc);

// C[M,N] = A[M,K] B[N,K]^T (forward of a fully connected layer: y (N,O) = x (N,K) w (O,K)^T).
void gemm_streamed_nt(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                      float* C, int ldc);

// Which of lrpfast's hand-written SIMD paths may run (process-wide): Native (default: the best the
// CPU has), Avx2 (at most AVX2 + FMA, as on a CPU without AVX-512) or Generic (none: plain C++,
// the path of non-x86 machines). Default from $LRPFAST_SIMD=native|avx2|generic.
enum class Simd { Native = 0, Avx2 = 1, Generic = 2 };
void set_simd(Simd s);
Simd simd();
const char* simd_kernels();  // what runs under that setting here: "avx512", "avx2" or "generic"

bool streamed_native();  // true where the AVX-512 kernels run (simd_kernels() == "avx512")

// Software prefetch distance (floats ahead in each row of B) of the AVX-512 and AVX2 C = A B^T
// kernels for a few rows of A (fully connected forward at batch 1 to 8 with AVX-512, 1 to 4 with
// AVX2); changes no result. Default from
// $LRPFAST_NT_PREFETCH, else 256 on Intel CPUs and 0 on others (see streamed.cpp).
int nt_prefetch();
void set_nt_prefetch(int floats);

// Process-wide choice: Auto (default) uses the kernels above where streamed_native(), their AVX2
// twins for up to 4 rows of A (batch 1 to 4) where the CPU has AVX2 + FMA only, and the portable
// twins (AVX2 + FMA or generic C++, same bits) in deterministic mode; Streamed always
// uses lrpfast's kernels (the portable twins without AVX-512); Blas calls gemm() (in deterministic
// mode one row of A at a time).
enum class LinearAlgo { Auto = 0, Blas = 1, Streamed = 2 };
void set_linear_algo(LinearAlgo a);
LinearAlgo linear_algo();  // default Auto, or LRPFAST_LINEAR_ALGO=blas|streamed|auto

}  // namespace lrpfast
