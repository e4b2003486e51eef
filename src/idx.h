/* IDX files (the MNIST / Fashion-MNIST container), optionally gzip-compressed, read with
 * zlib's gzread.  Pure C: never includes lua.h, never aborts; functions return 0 on success
 * or -1 with a message in err.
 *
 * Format: two zero bytes, an element-type byte (only 0x08, unsigned byte, is supported),
 * a dimension-count byte, that many big-endian uint32 sizes, then exactly
 * prod(sizes) elements in row-major order.  Anything else is reported as an error: a wrong
 * magic, an unknown or unsupported type, zero or more than DF_IDX_MAXDIM dimensions, a size
 * of zero in any dimension but the first, a file shorter or longer than its header says,
 * a damaged gzip stream (zlib checks its CRC when the reader reaches the end). */
#ifndef DIFFUSE_IDX_H
#define DIFFUSE_IDX_H

#include <stddef.h>
#include <stdint.h>

#define DF_IDX_MAXDIM 4
/* Largest file df_idx_read accepts, in elements (a header claiming more is an error). */
#define DF_IDX_MAX_ELEMENTS ((int64_t)1 << 31)

typedef struct df_idx_info {
  int dtype;  /* 0x08 */
  int ndim;   /* 1..DF_IDX_MAXDIM */
  int64_t dims[DF_IDX_MAXDIM];
} df_idx_info;

/* With dst == NULL: read and validate the header of path into info.
 * With dst != NULL: info must hold what a previous header read returned (a file that changed
 * since is an error).  The first `count` items (0 <= count <= dims[0]; an item is one slice
 * along the first dimension) are converted to dst[i] = byte * scale + offset, and the rest of
 * the file is read and checked too, so a truncated or damaged file is always reported. */
int df_idx_read(const char *path, df_idx_info *info, int64_t count, float *dst, double scale,
                double offset, char *err, size_t errn);

#endif
