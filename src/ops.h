/* Pure C elementwise kernels: binary arithmetic, unary math, fused linear combination and
 * comparisons over strided float32 views.  Never includes lua.h.
 *
 * Every kernel takes views that already have the output's shape: a broadcast input carries
 * stride 0 on its broadcast dimensions (see df_broadcast).  The output may be the very same
 * view as an input (same data pointer and strides); any other overlap between the output and
 * an input is the caller's business (copy the input to a temporary first). */
#ifndef DIFFUSE_OPS_H
#define DIFFUSE_OPS_H

#include "tensor.h"

typedef enum {
  DF_OP_ADD,     /* a + alpha*b */
  DF_OP_SUB,     /* a - alpha*b */
  DF_OP_MUL,
  DF_OP_DIV,
  DF_OP_POW,     /* powf(a, b) */
  DF_OP_MAX,     /* NaN if either is NaN (numpy maximum) */
  DF_OP_MIN
} df_binop;

typedef enum {
  DF_OP_NEG,
  DF_OP_EXP,
  DF_OP_LOG,
  DF_OP_SQRT,
  DF_OP_ABS,
  DF_OP_TANH,
  DF_OP_SIGMOID, /* 1/(1+exp(-x)), stable for large |x| */
  DF_OP_SILU,    /* x*sigmoid(x) */
  DF_OP_SQUARE,
  DF_OP_CLAMP    /* p0 <= x <= p1 (use -INFINITY/INFINITY for no bound); NaN stays NaN */
} df_unop;

/* out = a op b elementwise; out, a, b all have out's shape.  alpha scales b for ADD/SUB
 * and is ignored otherwise. */
void df_binary(df_tensor *out, const df_tensor *a, const df_tensor *b, df_binop op, float alpha);

/* out = op(a) elementwise; p0, p1 are the operator's parameters (CLAMP bounds). */
void df_unary(df_tensor *out, const df_tensor *a, df_unop op, float p0, float p1);

/* out = sum_k c[k] * ts[k] in one pass, n >= 1 terms, every view of out's shape.  Each
 * element is accumulated in double from the double coefficients and rounded to float once.
 * out may be the same view as any ts[k].  Returns 0, or -1 when n < 1, a shape differs or
 * scratch memory cannot be had (out is then untouched). */
int df_lincomb(df_tensor *out, const df_tensor *ts, const double *c, int n);

/* numpy isclose over every element of the broadcast pair: |a-b| <= atol + rtol*|b|, equal
 * infinities are close, NaN is never close.  a and b must have the same shape (broadcast
 * them first).  Returns 1 when all elements are close, else 0. */
int df_allclose(const df_tensor *a, const df_tensor *b, double rtol, double atol);

/* max |a-b| in double over same-shape views (0 for empty ones, NaN if any difference is NaN). */
double df_max_abs_diff(const df_tensor *a, const df_tensor *b);

#endif
