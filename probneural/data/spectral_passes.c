/* Fused memory passes of the Navier–Stokes solver's advection term and RK3 stages.
 *
 * Loaded with ctypes by probneural.data.spectral_passes, which documents each function, checks
 * every argument and falls back to torch operations where this library is missing. Each
 * function does in one pass over its arrays what takes two or three torch operations (each a
 * pass of its own plus a dispatch): the solver's elementwise work is a large share of a 256²
 * step next to its four line FFTs.
 *
 * Complex arrays are interleaved (real, imaginary) pairs; sizes and strides count complex
 * elements; `batch_stride` 0 broadcasts one table over the batch. The body is written once in
 * spectral_passes_body.h for a real type `real` and a name suffix, included for float and double.
 * Products are formed as (ac − bd, ad + bc), the order torch's CPU kernels use.
 */

#include <stddef.h>
#include <stdint.h>

/* An AVX2 and a baseline version of each function where the compiler can build both (chosen when
 * the library loads); FMA is not enabled, so products round as torch's CPU kernels round them. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__)
#define KERNEL __attribute__((target_clones("avx2", "default")))
#else
#define KERNEL
#endif

#define real float
#define NAME(name) name##_f32
#include "spectral_passes_body.h"
#undef real
#undef NAME

#define real double
#define NAME(name) name##_f64
#include "spectral_passes_body.h"
#undef real
#undef NAME

/* Checked by probneural.data.spectral_passes.ABI_VERSION when the library is loaded. */
int spectral_passes_abi(void) { return 1; }
