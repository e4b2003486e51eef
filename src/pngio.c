/* PNG reading and writing with libpng.  libpng reports errors by longjmp to the point set
 * with setjmp(png_jmpbuf(...)); every function that calls setjmp here keeps its state in a
 * struct owned by its caller, so nothing it changes after setjmp lives in its own frame. */
#include "pngio.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomicfile.h"

#define MSG_LEN 256

/* ---- shared error plumbing ---- */

typedef struct png_state {
  png_structp png;
  png_infop info;
  FILE *fp;
  char msg[MSG_LEN];  /* the error libpng (or an I/O callback) raised */
  char warn[MSG_LEN]; /* the last warning, which often explains a later error */
} png_state;

static void on_error(png_structp png, png_const_charp msg) {
  png_state *s = png_get_error_ptr(png);
  snprintf(s->msg, sizeof s->msg, "%s", msg);
  png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg) {
  png_state *s = png_get_error_ptr(png);
  snprintf(s->warn, sizeof s->warn, "%s", msg);
}

/* ---- writing ---- */

/* Where the encoded bytes go: a file (s.fp) or, when mem is set, a growing memory buffer. */
typedef struct membuf {
  unsigned char *data;
  size_t len, cap;
} membuf;

typedef struct writer {
  png_state s;
  const df_tensor *img;
  double lo, scale;    /* byte = (v - lo) * scale, rounded and clamped */
  unsigned char *row; /* one interleaved output row, allocated by the caller */
  membuf *mem;         /* NULL: write to s.fp */
} writer;

static void write_data(png_structp png, png_bytep data, size_t n) {
  png_state *s = png_get_io_ptr(png);
  if (fwrite(data, 1, n, s->fp) != n) png_error(png, strerror(errno ? errno : EIO));
}

static void flush_data(png_structp png) {
  png_state *s = png_get_io_ptr(png);
  if (fflush(s->fp) != 0) png_error(png, strerror(errno ? errno : EIO));
}

/* The io pointer of a memory writer is the writer itself (its png_state comes first, but the
 * callbacks only need the buffer). */
static void write_mem(png_structp png, png_bytep data, size_t n) {
  writer *w = png_get_io_ptr(png);
  membuf *m = w->mem;
  if (n > m->cap - m->len) {
    size_t cap = m->cap ? m->cap : 1024;
    while (n > cap - m->len) {
      if (cap > ((size_t)-1) / 2) png_error(png, "encoded image too large");
      cap *= 2;
    }
    unsigned char *d = realloc(m->data, cap);
    if (!d) png_error(png, "out of memory");
    m->data = d;
    m->cap = cap;
  }
  memcpy(m->data + m->len, data, n);
  m->len += n;
}

static void flush_none(png_structp png) { (void)png; }

static unsigned char to_byte(float v, double lo, double scale) {
  double x = ((double)v - lo) * scale;
  if (!(x > 0)) return 0; /* also NaN */
  if (x >= 255) return 255;
  return (unsigned char)(x + 0.5);
}

static void fill_row(const writer *w, int64_t y) {
  const df_tensor *t = w->img;
  int64_t C = t->shape[0], W = t->shape[2];
  for (int64_t c = 0; c < C; c++) {
    const float *p = t->data + c * t->stride[0] + y * t->stride[1];
    unsigned char *o = w->row + c;
    for (int64_t x = 0; x < W; x++) o[x * C] = to_byte(p[x * t->stride[2]], w->lo, w->scale);
  }
}

static int write_body(writer *w) {
  png_structp png = w->s.png;
  if (setjmp(png_jmpbuf(png))) return -1;
  static const int color[5] = {0, PNG_COLOR_TYPE_GRAY, 0, PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA};
  if (w->mem) png_set_write_fn(png, w, write_mem, flush_none);
  else png_set_write_fn(png, &w->s, write_data, flush_data);
  png_set_IHDR(png, w->s.info, (png_uint_32)w->img->shape[2], (png_uint_32)w->img->shape[1], 8,
               color[w->img->shape[0]], PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, w->s.info);
  for (int64_t y = 0; y < w->img->shape[1]; y++) {
    fill_row(w, y);
    png_write_row(png, w->row);
  }
  png_write_end(png, NULL);
  return 0;
}

/* The checks both writers share; path names the destination in messages. */
static int check_image(const char *path, const df_tensor *img, double lo, double hi, char *err,
                       size_t errn) {
  if (img->ndim != 3 || !(img->shape[0] == 1 || img->shape[0] == 3 || img->shape[0] == 4)) {
    snprintf(err, errn, "%s: image must be (C, H, W) with C = 1, 3 or 4", path);
    return -1;
  }
  if (img->shape[1] < 1 || img->shape[2] < 1 || img->shape[1] > 0x7fffffff ||
      img->shape[2] > 0x7fffffff) {
    snprintf(err, errn, "%s: image height and width must be 1 to 2^31-1", path);
    return -1;
  }
  if (!(hi > lo) || !isfinite(lo) || !isfinite(hi)) {
    snprintf(err, errn, "%s: value range must be finite with lo < hi", path);
    return -1;
  }
  return 0;
}

/* Sets up a writer for img (the caller checked it); -1 when the row buffer cannot be had. */
static int writer_init(writer *w, const df_tensor *img, double lo, double hi) {
  memset(w, 0, sizeof *w);
  w->img = img;
  w->lo = lo;
  w->scale = 255.0 / (hi - lo);
  w->row = malloc((size_t)img->shape[0] * (size_t)img->shape[2]);
  return w->row ? 0 : -1;
}

/* Creates the libpng structures, writes the image through the writer's sink, frees
   everything libpng and the writer hold; 0 or -1 with the reason in w->s.msg. */
static int writer_run(writer *w) {
  w->s.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &w->s, on_error, on_warning);
  if (w->s.png) w->s.info = png_create_info_struct(w->s.png);
  int rc = -1;
  if (!w->s.png || !w->s.info) snprintf(w->s.msg, sizeof w->s.msg, "out of memory");
  else rc = write_body(w);
  png_destroy_write_struct(w->s.png ? &w->s.png : NULL, w->s.info ? &w->s.info : NULL);
  free(w->row);
  w->row = NULL;
  return rc;
}

int df_png_encode(const df_tensor *img, double lo, double hi, unsigned char **out, size_t *len,
                  char *err, size_t errn) {
  *out = NULL;
  *len = 0;
  if (check_image("png encode", img, lo, hi, err, errn) != 0) return -1;
  membuf m = {NULL, 0, 0};
  writer w;
  if (writer_init(&w, img, lo, hi) != 0) {
    snprintf(err, errn, "png encode: out of memory");
    return -1;
  }
  w.mem = &m;
  if (writer_run(&w) != 0) {
    free(m.data);
    if (w.s.warn[0]) snprintf(err, errn, "png encode: %s (%s)", w.s.msg, w.s.warn);
    else snprintf(err, errn, "png encode: %s", w.s.msg);
    return -1;
  }
  *out = m.data;
  *len = m.len;
  return 0;
}

int df_png_write(const char *path, const df_tensor *img, double lo, double hi, char *err,
                 size_t errn) {
  if (check_image(path, img, lo, hi, err, errn) != 0) return -1;
  writer w;
  if (writer_init(&w, img, lo, hi) != 0) {
    snprintf(err, errn, "%s: out of memory", path);
    return -1;
  }
  df_atomic_file f;
  if (df_atomic_open(&f, path, err, errn) != 0) {
    free(w.row);
    return -1;
  }
  w.s.fp = f.fp;
  if (writer_run(&w) != 0) {
    df_atomic_abort(&f);
    if (w.s.warn[0]) snprintf(err, errn, "%s: cannot write PNG: %s (%s)", path, w.s.msg, w.s.warn);
    else snprintf(err, errn, "%s: cannot write PNG: %s", path, w.s.msg);
    return -1;
  }
  return df_atomic_commit(&f, err, errn);
}

/* ---- reading ---- */

typedef struct reader {
  png_state s;
  df_png_info *info;
  float *dst;          /* NULL: header only */
  unsigned char *buf;  /* decoded interleaved image, allocated here, freed by the caller */
  png_bytep *rows;
} reader;

static void read_data(png_structp png, png_bytep data, size_t n) {
  png_state *s = png_get_io_ptr(png);
  size_t got = fread(data, 1, n, s->fp);
  if (got != n) png_error(png, ferror(s->fp) ? strerror(errno ? errno : EIO) : "file is truncated");
}

/* Turn the decoded interleaved buffer into planar floats in [0, 1]. */
static void to_planar(const reader *r, size_t rowbytes) {
  int64_t C = r->info->channels, H = r->info->height, W = r->info->width;
  int64_t plane = H * W;
  if (r->info->bit_depth == 8) {
    float lut[256];
    for (int i = 0; i < 256; i++) lut[i] = (float)i / 255.0f;
    for (int64_t y = 0; y < H; y++) {
      const unsigned char *p = r->buf + (size_t)y * rowbytes;
      for (int64_t x = 0; x < W; x++)
        for (int64_t c = 0; c < C; c++) r->dst[c * plane + y * W + x] = lut[p[x * C + c]];
    }
  } else { /* 16-bit samples, big-endian in the decoded rows */
    for (int64_t y = 0; y < H; y++) {
      const unsigned char *p = r->buf + (size_t)y * rowbytes;
      for (int64_t x = 0; x < W; x++)
        for (int64_t c = 0; c < C; c++) {
          const unsigned char *q = p + 2 * (x * C + c);
          r->dst[c * plane + y * W + x] = (float)((q[0] << 8) | q[1]) / 65535.0f;
        }
    }
  }
}

static int read_body(reader *r) {
  png_structp png = r->s.png;
  png_infop info = r->s.info;
  if (setjmp(png_jmpbuf(png))) return -1;
  png_set_read_fn(png, &r->s, read_data);
  png_set_sig_bytes(png, 8);
  png_read_info(png, info);
  int color = png_get_color_type(png, info);
  int depth = png_get_bit_depth(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  int trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
  if (trns) png_set_tRNS_to_alpha(png);
  if (color == PNG_COLOR_TYPE_GRAY_ALPHA || (color == PNG_COLOR_TYPE_GRAY && trns))
    png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);

  df_png_info got;
  got.channels = png_get_channels(png, info);
  got.bit_depth = png_get_bit_depth(png, info);
  got.height = png_get_image_height(png, info);
  got.width = png_get_image_width(png, info);
  if (!(got.channels == 1 || got.channels == 3 || got.channels == 4) ||
      !(got.bit_depth == 8 || got.bit_depth == 16))
    png_error(png, "unsupported pixel format");
  if (got.height * got.width > DF_PNG_MAX_SAMPLES / got.channels)
    png_error(png, "image too large");
  if (!r->dst) {
    *r->info = got;
    return 0;
  }
  if (got.channels != r->info->channels || got.bit_depth != r->info->bit_depth ||
      got.height != r->info->height || got.width != r->info->width)
    png_error(png, "file changed while being read");

  size_t rowbytes = png_get_rowbytes(png, info);
  r->buf = malloc(rowbytes * (size_t)got.height);
  r->rows = malloc(sizeof(png_bytep) * (size_t)got.height);
  if (!r->buf || !r->rows) png_error(png, "out of memory");
  for (int64_t y = 0; y < got.height; y++) r->rows[y] = r->buf + (size_t)y * rowbytes;
  png_read_image(png, r->rows);
  png_read_end(png, NULL); /* checks the rest of the file up to IEND */
  to_planar(r, rowbytes);
  return 0;
}

int df_png_read(const char *path, df_png_info *info, float *dst, char *err, size_t errn) {
  reader r;
  memset(&r, 0, sizeof r);
  r.info = info;
  r.dst = dst;
  r.s.fp = fopen(path, "rb");
  if (!r.s.fp) {
    snprintf(err, errn, "%s: %s", path, strerror(errno));
    return -1;
  }
  unsigned char sig[8];
  size_t n = fread(sig, 1, sizeof sig, r.s.fp);
  if (n < sizeof sig || png_sig_cmp(sig, 0, sizeof sig) != 0) {
    int prefix = n > 0 && png_sig_cmp(sig, 0, n) == 0;
    if (ferror(r.s.fp)) snprintf(err, errn, "%s: %s", path, strerror(errno ? errno : EIO));
    else if (prefix && n < sizeof sig) snprintf(err, errn, "%s: invalid PNG: file is truncated", path);
    else snprintf(err, errn, "%s: not a PNG file", path);
    fclose(r.s.fp);
    return -1;
  }
  r.s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r.s, on_error, on_warning);
  if (r.s.png) r.s.info = png_create_info_struct(r.s.png);
  int rc = -1;
  if (!r.s.png || !r.s.info) snprintf(r.s.msg, sizeof r.s.msg, "out of memory");
  else rc = read_body(&r);
  png_destroy_read_struct(r.s.png ? &r.s.png : NULL, r.s.info ? &r.s.info : NULL, NULL);
  free(r.buf);
  free(r.rows);
  fclose(r.s.fp);
  if (rc != 0) {
    snprintf(err, errn, "%s: invalid PNG: %s", path, r.s.msg);
    return -1;
  }
  return 0;
}
