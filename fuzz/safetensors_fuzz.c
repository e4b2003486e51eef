/* libFuzzer harness for the safetensors reader (src/safetensors.c), run by `make fuzz`.
 * Each input is a whole file held in memory.  For one that validates, every tensor is converted
 * from the data buffer (reading exactly the validated byte ranges), then written back with the
 * writer and parsed again, which must succeed and give the same values.  The raw bytes are
 * also fed to the JSON header parser directly. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond) {
  if (!cond) __builtin_trap();
}

/* The writer refuses shapes whose non-zero dimensions times 4 bytes exceed INT64_MAX (an empty
 * tensor can have such dimensions in a U8 file). */
static int writable(const df_st_tensor *t) {
  uint64_t prod = 4;
  for (int d = 0; d < t->ndim; d++) {
    uint64_t dim = (uint64_t)t->shape[d];
    if (dim == 0) continue;
    if (prod > (uint64_t)INT64_MAX / dim) return 0;
    prod *= dim;
  }
  return 1;
}

static void roundtrip(const df_st_header *h, float **vals, int dtype) {
  df_st_entry *ents = calloc(h->ntensors ? h->ntensors : 1, sizeof *ents);
  df_tensor *views = calloc(h->ntensors ? h->ntensors : 1, sizeof *views);
  check(ents && views);
  size_t n = 0;
  for (size_t i = 0; i < h->ntensors; i++) {
    const df_st_tensor *t = &h->tensors[i];
    if (t->ndim > DF_MAXDIM || !writable(t)) continue;
    df_tensor *v = &views[n];
    v->data = vals[i];
    v->ndim = t->ndim ? t->ndim : 1;
    v->shape[0] = 1;
    for (int d = 0; d < t->ndim; d++) v->shape[d] = t->shape[d];
    df_set_contiguous_strides(v);
    ents[n].name = t->name;
    ents[n].name_len = t->name_len;
    ents[n].t = v;
    n++;
  }
  char *out = NULL;
  size_t outn = 0;
  FILE *fp = open_memstream(&out, &outn);
  check(fp != NULL);
  char err[512];
  int rc = df_st_write(fp, ents, n, h->meta, h->nmeta, dtype, err, sizeof err);
  fclose(fp);
  if (rc != 0) fprintf(stderr, "writer failed: %s\n", err);
  check(rc == 0);
  df_st_header h2;
  rc = df_st_parse_buffer((const unsigned char *)out, outn, &h2, err, sizeof err);
  if (rc != 0) fprintf(stderr, "rewritten file rejected: %s\n", err);
  check(rc == 0);
  check(h2.ntensors == n && h2.nmeta == h->nmeta);
  check(h2.header_len % 8 == 0);
  if (dtype == DF_ST_F32) {
    /* Same names in the same order, and the same bits. */
    const unsigned char *buf = (const unsigned char *)out + 8 + h2.header_len;
    for (size_t i = 0; i < h2.ntensors; i++) {
      const df_st_tensor *t = &h2.tensors[i];
      const df_tensor *src = NULL;
      for (size_t k = 0; k < n; k++)
        if (ents[k].name_len == t->name_len && !memcmp(ents[k].name, t->name, t->name_len)) src = ents[k].t;
      check(src != NULL);
      check(t->numel == df_numel(src));
      float *back = malloc(t->numel ? (size_t)t->numel * 4 : 4);
      check(back != NULL);
      df_st_convert(t->dtype, buf + t->begin, (size_t)t->numel, back);
      check(t->numel == 0 || memcmp(back, src->data, (size_t)t->numel * 4) == 0);
      free(back);
    }
  }
  df_st_free(&h2);
  free(out);
  free(ents);
  free(views);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512];
  df_st_header h;
  err[0] = '\0';
  if (df_st_parse_json((const char *)data, size, 0, &h, err, sizeof err) == 0) df_st_free(&h);
  else check(err[0] != '\0' && memchr(err, '\0', sizeof err) != NULL);

  err[0] = '\0';
  if (df_st_parse_buffer(data, size, &h, err, sizeof err) != 0) {
    check(err[0] != '\0');
    check(h.ntensors == 0 && h.tensors == NULL);
    return 0;
  }
  check(8 + h.header_len + h.data_size == size);
  const unsigned char *buf = data + 8 + h.header_len;
  float **vals = calloc(h.ntensors ? h.ntensors : 1, sizeof *vals);
  check(vals != NULL);
  uint64_t covered = 0;
  for (size_t i = 0; i < h.ntensors; i++) {
    const df_st_tensor *t = &h.tensors[i];
    check(t->end <= h.data_size && t->begin <= t->end);
    check(t->end - t->begin == (uint64_t)t->numel * df_st_dtype_size(t->dtype));
    check(t->begin == covered);
    covered = t->end;
    /* A copy of exactly the tensor's bytes, so ASan sees any read past its range. */
    size_t nb = (size_t)(t->end - t->begin);
    unsigned char *bytes = malloc(nb ? nb : 1);
    check(bytes != NULL);
    memcpy(bytes, buf + t->begin, nb);
    vals[i] = malloc(t->numel ? (size_t)t->numel * sizeof(float) : sizeof(float));
    check(vals[i] != NULL);
    df_st_convert(t->dtype, bytes, (size_t)t->numel, vals[i]);
    free(bytes);
  }
  check(covered == h.data_size);
  roundtrip(&h, vals, DF_ST_F32);
  roundtrip(&h, vals, DF_ST_F16);
  roundtrip(&h, vals, DF_ST_BF16);
  for (size_t i = 0; i < h.ntensors; i++) free(vals[i]);
  free(vals);
  df_st_free(&h);
  return 0;
}
