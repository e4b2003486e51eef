#include "idx.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define CHUNK ((size_t)1 << 20)

/* zlib's message, without the "<path>: " it puts in front. */
static const char *zerror(gzFile g, const char *path, int *code) {
  const char *m = gzerror(g, code);
  size_t n = strlen(path);
  if (strncmp(m, path, n) == 0 && m[n] == ':' && m[n + 1] == ' ') m += n + 2;
  return m;
}

/* Read exactly n bytes; on a short read say why (zlib's error, or plain truncation). */
static int read_exact(gzFile g, unsigned char *buf, size_t n, const char *path, const char *what,
                      char *err, size_t errn) {
  size_t done = 0;
  while (done < n) {
    size_t want = n - done;
    if (want > CHUNK) want = CHUNK;
    int got = gzread(g, buf + done, (unsigned)want);
    if (got <= 0) {
      int code;
      const char *zmsg = zerror(g, path, &code);
      if (code == Z_ERRNO) snprintf(err, errn, "%s: %s", path, strerror(errno ? errno : EIO));
      else if (code != Z_OK) snprintf(err, errn, "%s: corrupt file: %s", path, zmsg);
      else snprintf(err, errn, "%s: file is truncated (in the %s)", path, what);
      return -1;
    }
    done += (size_t)got;
  }
  return 0;
}

static int read_header(gzFile g, const char *path, df_idx_info *h, char *err, size_t errn) {
  unsigned char b[4 * DF_IDX_MAXDIM];
  if (read_exact(g, b, 4, path, "header", err, errn) != 0) return -1;
  if (b[0] != 0 || b[1] != 0) {
    snprintf(err, errn, "%s: not an IDX file (bad magic %02x %02x)", path, b[0], b[1]);
    return -1;
  }
  h->dtype = b[2];
  h->ndim = b[3];
  switch (h->dtype) {
    case 0x08: break;
    case 0x09: case 0x0B: case 0x0C: case 0x0D: case 0x0E:
      snprintf(err, errn, "%s: unsupported IDX element type 0x%02X (only unsigned bytes, 0x08)", path, h->dtype);
      return -1;
    default:
      snprintf(err, errn, "%s: not an IDX file (unknown element type 0x%02X)", path, h->dtype);
      return -1;
  }
  if (h->ndim < 1 || h->ndim > DF_IDX_MAXDIM) {
    snprintf(err, errn, "%s: IDX file has %d dimensions (1 to %d supported)", path, h->ndim, DF_IDX_MAXDIM);
    return -1;
  }
  if (read_exact(g, b, 4 * (size_t)h->ndim, path, "header", err, errn) != 0) return -1;
  int64_t total = 1;
  for (int d = 0; d < h->ndim; d++) {
    const unsigned char *p = b + 4 * d;
    h->dims[d] = ((int64_t)p[0] << 24) | ((int64_t)p[1] << 16) | ((int64_t)p[2] << 8) | p[3];
    if (d > 0 && h->dims[d] == 0) {
      snprintf(err, errn, "%s: IDX dimension %d has size 0", path, d + 1);
      return -1;
    }
    /* each size < 2^32, so checking after every product keeps it below 2^63 */
    total *= h->dims[d];
    if (total > DF_IDX_MAX_ELEMENTS) {
      snprintf(err, errn, "%s: IDX file too large (more than 2^31 elements)", path);
      return -1;
    }
  }
  return 0;
}

/* State shared with the cleanup path; owned by df_idx_read. */
typedef struct idx_reader {
  gzFile g;
  unsigned char *buf;
} idx_reader;

static int read_body(idx_reader *r, const char *path, df_idx_info *info, int64_t count, float *dst,
                     double scale, double offset, char *err, size_t errn) {
  df_idx_info h;
  if (read_header(r->g, path, &h, err, errn) != 0) return -1;
  if (!dst) {
    *info = h;
    return 0;
  }
  if (h.dtype != info->dtype || h.ndim != info->ndim ||
      memcmp(h.dims, info->dims, sizeof(int64_t) * (size_t)h.ndim) != 0) {
    snprintf(err, errn, "%s: file changed while being read", path);
    return -1;
  }
  if (count < 0 || count > h.dims[0]) {
    snprintf(err, errn, "%s: cannot read %lld items of %lld", path, (long long)count, (long long)h.dims[0]);
    return -1;
  }
  int64_t item = 1;
  for (int d = 1; d < h.ndim; d++) item *= h.dims[d];
  int64_t want = count * item, rest = (h.dims[0] - count) * item;

  float lut[256];
  for (int i = 0; i < 256; i++) lut[i] = (float)((double)i * scale + offset);
  r->buf = malloc(CHUNK);
  if (!r->buf) {
    snprintf(err, errn, "%s: out of memory", path);
    return -1;
  }
  for (int64_t done = 0; done < want;) {
    size_t n = (size_t)(want - done) < CHUNK ? (size_t)(want - done) : CHUNK;
    if (read_exact(r->g, r->buf, n, path, "data", err, errn) != 0) return -1;
    float *o = dst + done;
    for (size_t i = 0; i < n; i++) o[i] = lut[r->buf[i]];
    done += (int64_t)n;
  }
  /* The items not asked for are still read: a short or damaged file must not pass. */
  for (int64_t done = 0; done < rest;) {
    size_t n = (size_t)(rest - done) < CHUNK ? (size_t)(rest - done) : CHUNK;
    if (read_exact(r->g, r->buf, n, path, "data", err, errn) != 0) return -1;
    done += (int64_t)n;
  }
  int extra = gzread(r->g, r->buf, (unsigned)CHUNK);
  int code;
  const char *zmsg = zerror(r->g, path, &code);
  if (extra < 0 || (code != Z_OK && code != Z_STREAM_END)) {
    if (code == Z_ERRNO) snprintf(err, errn, "%s: %s", path, strerror(errno ? errno : EIO));
    else snprintf(err, errn, "%s: corrupt file: %s", path, zmsg);
    return -1;
  }
  if (extra > 0) {
    snprintf(err, errn, "%s: file is longer than its IDX header says (%s%d extra bytes)", path,
             extra == (int)CHUNK ? "at least " : "", extra);
    return -1;
  }
  return 0;
}

int df_idx_read(const char *path, df_idx_info *info, int64_t count, float *dst, double scale,
                double offset, char *err, size_t errn) {
  idx_reader r = {NULL, NULL};
  errno = 0;
  r.g = gzopen(path, "rb");
  if (!r.g) {
    snprintf(err, errn, "%s: %s", path, errno ? strerror(errno) : "out of memory");
    return -1;
  }
  gzbuffer(r.g, 1u << 17);
  int rc = read_body(&r, path, info, count, dst, scale, offset, err, errn);
  free(r.buf);
  int crc = gzclose_r(r.g);
  if (rc == 0 && crc == Z_BUF_ERROR) { /* zlib's word for a stream that stopped early */
    snprintf(err, errn, "%s: corrupt file: truncated gzip stream", path);
    return -1;
  }
  if (rc == 0 && crc != Z_OK) {
    snprintf(err, errn, "%s: cannot close: zlib error %d", path, crc);
    return -1;
  }
  return rc;
}
