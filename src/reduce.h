/* Pure C reductions over strided float32 views: sum, mean, min/max (with indices), norms,
 * logsumexp, variance.  Accumulation is in double; variance is two-pass.  Indices here are
 * 0-based (the binding adds 1).  Never includes lua.h; allocates nothing. */
#ifndef DIFFUSE_REDUCE_H
#define DIFFUSE_REDUCE_H

#include "tensor.h"

typedef enum {
  DF_RED_SUM,
  DF_RED_MEAN,
  DF_RED_MIN,       /* value and index; the first NaN wins, ties keep the first index */
  DF_RED_MAX,
  DF_RED_NORM,      /* p-norm, p > 0 (p = INFINITY for the max norm) */
  DF_RED_LOGSUMEXP,
  DF_RED_VAR,       /* sum of squared deviations / max(0, n - correction) */
  DF_RED_STD
} df_reduce_op;

typedef struct {
  df_reduce_op op;
  double p;          /* DF_RED_NORM */
  double correction; /* DF_RED_VAR, DF_RED_STD */
} df_reduce_spec;

/* Reduce every element of t.  *index (may be NULL) receives the 0-based row-major index of
 * the extremum for DF_RED_MIN / DF_RED_MAX (-1 when t is empty).  Returns 0, or -1 when the
 * layout of t cannot be walked as one strided run (the caller then passes a contiguous copy).
 * An empty tensor gives sum 0, mean NaN, norm 0, logsumexp -inf, var NaN, min/max NaN. */
int df_reduce_all(const df_tensor *t, const df_reduce_spec *s, double *value, int64_t *index);

/* Reduce t along dim (0-based).  values and indices (each may be NULL; indices only for
 * MIN / MAX) are dense arrays of numel(t) / shape[dim] floats, in row-major order of the
 * remaining dimensions.  Returns 0, or -1 when the layout cannot be handled without a
 * contiguous copy (the caller then retries with one). */
int df_reduce_dim(const df_tensor *t, int dim, const df_reduce_spec *s, float *values,
                  float *indices);

#endif
