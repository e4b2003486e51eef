#include "tensor.h"

#include <stdio.h>
#include <string.h>

int64_t df_numel(const df_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

int df_is_contiguous(const df_tensor *t) {
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != expect) return 0;
    expect *= t->shape[i];
  }
  return 1;
}

void df_set_contiguous_strides(df_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    t->stride[i] = s;
    s *= t->shape[i];
  }
}

int df_same_shape(const df_tensor *a, const df_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

const char *df_shape_str(const df_tensor *t, char *buf, size_t n) {
  size_t used = 0;
  if (n == 0) return buf;
  buf[0] = '\0';
  used += (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < t->ndim && used < n; i++)
    used += (size_t)snprintf(buf + used, n - used, i ? "x%lld" : "%lld", (long long)t->shape[i]);
  if (used < n) snprintf(buf + used, n - used, "]");
  return buf;
}

size_t df_bytes_for(int64_t numel) {
  if (numel < 0 || (uint64_t)numel > (SIZE_MAX - 64) / sizeof(float)) return 0;
  return (size_t)numel * sizeof(float);
}

int64_t df_offset_of(const df_tensor *t, int64_t idx) {
  int64_t off = 0;
  for (int i = t->ndim - 1; i >= 0; i--) {
    int64_t k = idx % t->shape[i];
    idx /= t->shape[i];
    off += k * t->stride[i];
  }
  return off;
}

/* Pad a view to 4 dims (leading size-1 dims) so loops can be a fixed nest. */
static void pad4(const df_tensor *t, int64_t sh[4], int64_t st[4]) {
  int lead = DF_MAXDIM - t->ndim;
  for (int i = 0; i < lead; i++) { sh[i] = 1; st[i] = 0; }
  for (int i = 0; i < t->ndim; i++) { sh[lead + i] = t->shape[i]; st[lead + i] = t->stride[i]; }
}

void df_copy(df_tensor *dst, const df_tensor *src) {
  if (df_is_contiguous(dst) && df_is_contiguous(src)) {
    memcpy(dst->data, src->data, (size_t)df_numel(dst) * sizeof(float));
    return;
  }
  int64_t sh[4], sd[4], ss[4], tmp[4];
  pad4(dst, sh, sd);
  pad4(src, tmp, ss);
  for (int64_t i = 0; i < sh[0]; i++)
    for (int64_t j = 0; j < sh[1]; j++)
      for (int64_t k = 0; k < sh[2]; k++) {
        float *d = dst->data + i * sd[0] + j * sd[1] + k * sd[2];
        const float *s = src->data + i * ss[0] + j * ss[1] + k * ss[2];
        for (int64_t l = 0; l < sh[3]; l++) d[l * sd[3]] = s[l * ss[3]];
      }
}

void df_fill(df_tensor *t, float v) {
  int64_t sh[4], st[4];
  pad4(t, sh, st);
  for (int64_t i = 0; i < sh[0]; i++)
    for (int64_t j = 0; j < sh[1]; j++)
      for (int64_t k = 0; k < sh[2]; k++) {
        float *d = t->data + i * st[0] + j * st[1] + k * st[2];
        for (int64_t l = 0; l < sh[3]; l++) d[l * st[3]] = v;
      }
}

int df_broadcast(const df_tensor *a, const df_tensor *b, df_tensor *ba, df_tensor *bb,
                 int *ndim, int64_t shape[DF_MAXDIM]) {
  int n = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int i = 0; i < n; i++) {
    int ia = i - (n - a->ndim), ib = i - (n - b->ndim);
    int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
    int64_t ta = ia >= 0 ? a->stride[ia] : 0, tb = ib >= 0 ? b->stride[ib] : 0;
    if (sa != sb && sa != 1 && sb != 1) return -1;
    shape[i] = sa == 1 ? sb : sa;
    ba->shape[i] = bb->shape[i] = shape[i];
    ba->stride[i] = (sa == 1 && shape[i] != 1) ? 0 : ta;
    bb->stride[i] = (sb == 1 && shape[i] != 1) ? 0 : tb;
  }
  ba->ndim = bb->ndim = *ndim = n;
  ba->data = a->data;
  bb->data = b->data;
  return 0;
}
