/* Fused memory passes of the Navier–Stokes solver's advection term and RK3 stages.
 *
 * Loaded with ctypes by probneural.data.spectral_passes, which documents each function, checks its
 * arguments and names the torch operations each replaces (the solvers run those where this library
 * is missing). Each function does in one pass over its arrays what takes two to four torch
 * operations, each a pass of its own plus a dispatch.
 *
 * Complex arrays are interleaved (real, imaginary) pairs; sizes and strides count complex
 * elements; a batch stride 0 shares one table across the batch. The body is written once in
 * spectral_passes_body.h for a real type `real` and a name suffix, included for float and double.
 * Products are formed as (ac − bd, ad + bc), the order torch's CPU kernels use.
 */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* An AVX2 and a baseline version of each function where the compiler can build both (chosen when the
 * library loads, through glibc's ifunc); setup.py turns off the contraction of products and sums into
 * FMAs (-ffp-contract=off), so products round as torch's x86 CPU kernels round them. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__)
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

/* SHA-256 of the sources this library was built from (setup.py defines it), which
 * probneural.data.spectral_passes compares with the sources next to it when it loads the library. */
#ifndef SPECTRAL_PASSES_SOURCE
#define SPECTRAL_PASSES_SOURCE "unknown"
#endif
const char *spectral_passes_source(void) { return SPECTRAL_PASSES_SOURCE; }
