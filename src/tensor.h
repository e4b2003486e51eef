/* Pure C tensor core: strided float32 views and the kernels that walk them.
 * Never includes lua.h; allocation belongs to the caller (the Lua binding owns storage
 * through the garbage collector), so every function here works on views it is given. */
#ifndef DIFFUSE_TENSOR_H
#define DIFFUSE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define DF_MAXDIM 4

typedef struct df_tensor {
  float *data;                  /* first element of the view; NULL once closed */
  int ndim;                     /* 1..DF_MAXDIM */
  int64_t shape[DF_MAXDIM];
  int64_t stride[DF_MAXDIM];    /* in elements; 0 marks a broadcast dimension */
} df_tensor;

int64_t df_numel(const df_tensor *t);
int df_is_contiguous(const df_tensor *t);
/* Fill stride[] for a dense row-major layout of shape[]. */
void df_set_contiguous_strides(df_tensor *t);
int df_same_shape(const df_tensor *a, const df_tensor *b);
/* "[2x3]" into buf; returns buf. */
const char *df_shape_str(const df_tensor *t, char *buf, size_t n);
/* Bytes for numel floats, or 0 when numel is negative or would overflow size_t. */
size_t df_bytes_for(int64_t numel);

/* dst[...] = src[...] elementwise over equal shapes, any strides (overlap not allowed). */
void df_copy(df_tensor *dst, const df_tensor *src);
void df_fill(df_tensor *t, float v);

/* Linear offset (in elements) of the idx-th element in row-major logical order. */
int64_t df_offset_of(const df_tensor *t, int64_t idx);

/* Numpy broadcasting of two shapes.  On success returns 0 and writes the result shape and
 * the two views re-strided to it (stride 0 on broadcast dims).  Returns -1 if incompatible. */
int df_broadcast(const df_tensor *a, const df_tensor *b, df_tensor *ba, df_tensor *bb,
                 int *ndim, int64_t shape[DF_MAXDIM]);

#endif
