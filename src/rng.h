/* Counter-based random numbers: Philox4x32-10 and the fills built on it.
 * Pure C (no lua.h).  Every value is a pure function of (seed, row, draw, element), so the
 * result never depends on batch size, batch position or the number of threads. */
#ifndef DIFFUSE_RNG_H
#define DIFFUSE_RNG_H

#include <stdint.h>

#include "tensor.h"

/* One Philox4x32-10 block: out = bijection_key(ctr). */
void df_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

typedef enum { DF_RNG_NORMAL = 0, DF_RNG_UNIFORM = 1 } df_rng_dist;

/* Largest draw number (the counter word it occupies is 32 bits). */
#define DF_RNG_MAX_DRAW UINT32_MAX

/* Fill t (any strides) with standard normals or uniforms in [0, 1).  Row r (0-based index
 * along dimension 1) of t is global row first_row + r; its elements are the remaining
 * dimensions flattened in row-major order (a 1-d tensor has one element per row).
 * Element j of global row i at draw k with seed s comes from the Philox block with
 * counter (j / 4, k, i mod 2^32, i / 2^32) and key (s mod 2^32, s / 2^32), output j mod 4.
 * Returns NULL on success or a static error message (nothing is written then). */
const char *df_rng_fill(df_tensor *t, df_rng_dist dist, uint64_t seed, uint64_t first_row,
                        uint64_t draw);

#endif
