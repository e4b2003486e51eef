/* PNG files <-> float32 tensors, through libpng.  Pure C: never includes lua.h, never
 * aborts; every function returns 0 on success or -1 with a message in err.
 *
 * Pixel layout on the tensor side is planar (C, H, W); PNG files are interleaved.
 * Writing maps a value v to the byte round(255 * (v - lo) / (hi - lo)), clamped to 0..255
 * (NaN becomes 0).  Reading gives byte / 255 (or sample / 65535 for 16-bit files). */
#ifndef DIFFUSE_PNG_H
#define DIFFUSE_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* Largest image df_png_read accepts, in decoded samples (channels * height * width). */
#define DF_PNG_MAX_SAMPLES ((int64_t)1 << 28)

typedef struct df_png_info {
  int channels;  /* after conversion: 1 (gray), 3 (RGB) or 4 (RGBA) */
  int64_t height, width;
  int bit_depth; /* of the decoded samples: 8 or 16 */
} df_png_info;

/* Write img, a (C, H, W) view with C = 1, 3 or 4 and any strides, to path as an 8-bit PNG
 * (gray, RGB or RGBA), mapping [lo, hi] to [0, 255].  The file is written to a temporary
 * file and renamed into place, so on failure an existing file at path is left intact. */
int df_png_write(const char *path, const df_tensor *img, double lo, double hi, char *err,
                 size_t errn);

/* Encode img exactly as df_png_write would write it, into memory: on success *out is a
 * malloc'd buffer of *len bytes (the caller frees it); on failure *out is NULL. */
int df_png_encode(const df_tensor *img, double lo, double hi, unsigned char **out, size_t *len,
                  char *err, size_t errn);

/* With dst == NULL: read only the header of path and fill info (palette images become RGB
 * or RGBA, gray + alpha becomes RGBA, a tRNS chunk becomes an alpha channel, bit depths below
 * 8 are expanded).  With dst != NULL: info must hold what a previous header read returned;
 * the whole file is decoded into dst, a dense (channels, height, width) float buffer, with
 * values in [0, 1].  A file that changed in between is an error. */
int df_png_read(const char *path, df_png_info *info, float *dst, char *err, size_t errn);

#endif
