/* safetensors files, pure C: a strict JSON parser for the header, validation of the whole
 * layout against the size of the data buffer, dtype conversion to float32, and the header
 * writer.  Never includes lua.h; every failure comes back as -1 with a message in err.
 *
 * File layout: 8-byte little-endian u64 N, N bytes of UTF-8 JSON (an object mapping tensor
 * names to {"dtype", "shape", "data_offsets"} plus an optional "__metadata__" object of
 * string -> string), then the data buffer that the offsets index into. */
#ifndef DIFFUSE_SAFETENSORS_H
#define DIFFUSE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tensor.h"

/* Largest header accepted (the reference implementation's limit too). */
#define DF_ST_MAX_HEADER 100000000u
/* Deepest JSON nesting accepted anywhere in the header (the schema itself needs 3). */
#define DF_ST_MAX_DEPTH 64
/* Most dimensions a shape may have in the header (info() reports them; load() takes 0..4). */
#define DF_ST_MAX_NDIM 64

enum {
  DF_ST_F64, DF_ST_F32, DF_ST_F16, DF_ST_BF16,
  DF_ST_I64, DF_ST_I32, DF_ST_I16, DF_ST_I8,
  DF_ST_U64, DF_ST_U32, DF_ST_U16, DF_ST_U8,
  DF_ST_BOOL, DF_ST_F8_E5M2, DF_ST_F8_E4M3,
  DF_ST_NDTYPES
};

typedef struct df_st_tensor {
  char *name;        /* decoded UTF-8, NUL-terminated, may hold NULs (use name_len) */
  size_t name_len;
  int dtype;         /* DF_ST_* */
  int ndim;          /* 0..DF_ST_MAX_NDIM */
  const int64_t *shape; /* ndim entries (points into the header's shared pool) */
  size_t shape_at;   /* index of shape[0] in that pool */
  int64_t numel;
  uint64_t begin, end; /* byte offsets into the data buffer, end - begin = numel * size */
} df_st_tensor;

typedef struct df_st_kv {
  char *key, *value;
  size_t key_len, value_len;
} df_st_kv;

typedef struct df_st_header {
  df_st_tensor *tensors; /* sorted by data offset */
  size_t ntensors;
  df_st_kv *meta;        /* sorted by key */
  size_t nmeta;
  int64_t *dims;         /* pool holding every tensor's shape */
  size_t ndims, dims_cap;
  size_t tensors_cap, meta_cap;
  uint64_t header_len;   /* N */
  uint64_t data_size;    /* bytes in the data buffer (all covered by the tensors) */
} df_st_header;

/* dtype name ("F32") -> DF_ST_*, or -1. */
int df_st_dtype_from_name(const char *s, size_t n);
const char *df_st_dtype_name(int dtype);
/* Bytes per element of a DF_ST_* dtype. */
size_t df_st_dtype_size(int dtype);

/* Parse and validate the JSON header (n bytes at json) for a data buffer of data_size bytes.
 * On success returns 0 and fills h (release with df_st_free); on failure returns -1, leaves h
 * empty and writes a message. */
int df_st_parse_json(const char *json, size_t n, uint64_t data_size, df_st_header *h,
                     char *err, size_t errn);
/* A whole file held in memory: length prefix, header and the data buffer. */
int df_st_parse_buffer(const unsigned char *buf, size_t n, df_st_header *h, char *err, size_t errn);
/* Read and validate the header of an open file of file_size bytes (positioned anywhere). */
int df_st_read_header(FILE *fp, uint64_t file_size, df_st_header *h, char *err, size_t errn);
/* Read the data of tensor t (validated by h) from fp and convert it into numel floats at dst. */
int df_st_read_tensor(FILE *fp, const df_st_header *h, const df_st_tensor *t, float *dst,
                      char *err, size_t errn);
void df_st_free(df_st_header *h);

/* Convert count elements of dtype at src (little-endian bytes) to float32. */
void df_st_convert(int dtype, const unsigned char *src, size_t count, float *dst);

/* Scalar conversions: round to nearest even, overflow to infinity, NaN stays NaN. */
uint16_t df_st_f32_to_f16(float f);
float df_st_f16_to_f32(uint16_t h);
uint16_t df_st_f32_to_bf16(float f);
float df_st_bf16_to_f32(uint16_t h);

/* 1 if the n bytes at s are valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
int df_st_valid_utf8(const char *s, size_t n);

/* What the writer needs to know about one tensor. */
typedef struct df_st_entry {
  const char *name;
  size_t name_len;
  const df_tensor *t;
} df_st_entry;

/* Write a complete file to fp: the tensors in the given order (contiguous, converted to dtype,
 * which must be DF_ST_F32, DF_ST_F16 or DF_ST_BF16) and the metadata in the given order.  The
 * header is padded with spaces to a multiple of 8 bytes.  Names, keys and values must be
 * valid UTF-8 (checked: -1 with a message otherwise). */
int df_st_write(FILE *fp, const df_st_entry *tensors, size_t n, const df_st_kv *meta,
                size_t nmeta, int dtype, char *err, size_t errn);

#endif
