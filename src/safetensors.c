/* safetensors: strict header parser and validator, dtype conversion, writer.  See safetensors.h.
 * Nothing here trusts a size from the file before checking it against the bytes that exist. */
#include "safetensors.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* ---- messages ---- */

static int fail(char *err, size_t errn, const char *fmt, ...) {
  if (err && errn) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errn, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* A name fit for a message: at most 60 bytes, control bytes shown as '?'. */
static const char *show(const char *s, size_t n, char *buf, size_t bn) {
  size_t lim = n > 60 ? 57 : n, k = 0;
  for (size_t i = 0; i < lim && k + 4 < bn; i++) {
    unsigned char c = (unsigned char)s[i];
    buf[k++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
  }
  if (n > lim && k + 4 < bn) { memcpy(buf + k, "...", 3); k += 3; }
  buf[k] = '\0';
  return buf;
}

/* ---- dtypes ---- */

static const struct { const char *name; size_t size; } dtypes[DF_ST_NDTYPES] = {
  [DF_ST_F64] = {"F64", 8}, [DF_ST_F32] = {"F32", 4}, [DF_ST_F16] = {"F16", 2},
  [DF_ST_BF16] = {"BF16", 2}, [DF_ST_I64] = {"I64", 8}, [DF_ST_I32] = {"I32", 4},
  [DF_ST_I16] = {"I16", 2}, [DF_ST_I8] = {"I8", 1}, [DF_ST_U64] = {"U64", 8},
  [DF_ST_U32] = {"U32", 4}, [DF_ST_U16] = {"U16", 2}, [DF_ST_U8] = {"U8", 1},
  [DF_ST_BOOL] = {"BOOL", 1}, [DF_ST_F8_E5M2] = {"F8_E5M2", 1}, [DF_ST_F8_E4M3] = {"F8_E4M3", 1},
};

int df_st_dtype_from_name(const char *s, size_t n) {
  for (int i = 0; i < DF_ST_NDTYPES; i++)
    if (strlen(dtypes[i].name) == n && memcmp(dtypes[i].name, s, n) == 0) return i;
  return -1;
}

const char *df_st_dtype_name(int dtype) {
  return (dtype >= 0 && dtype < DF_ST_NDTYPES) ? dtypes[dtype].name : "?";
}

size_t df_st_dtype_size(int dtype) {
  return (dtype >= 0 && dtype < DF_ST_NDTYPES) ? dtypes[dtype].size : 0;
}

/* ---- scalar conversions ---- */

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float df_st_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {
    float v = ldexpf((float)man, -24); /* zero or subnormal, exact */
    return sign ? -v : v;
  }
  if (exp == 31) return float_of(sign | 0x7f800000u | (man << 13));
  return float_of(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t df_st_f32_to_f16(float f) {
  uint32_t u = bits_of(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to infinity */
  if (a < 0x38800000u) {                                   /* below 2^-14: subnormal half */
    if (a <= 0x33000000u) return sign;                     /* <= 2^-25 rounds to zero */
    uint32_t e = a >> 23, mant = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;                              /* 14..24 */
    uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t h = (((a >> 23) - 112) << 10) | ((a >> 13) & 0x3ffu);
  uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* carries into the exponent */
  return (uint16_t)(sign | h);
}

float df_st_bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

uint16_t df_st_f32_to_bf16(float f) {
  uint32_t u = bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static float e4m3_to_f32(unsigned char b) {
  unsigned exp = (b >> 3) & 0xfu, man = b & 7u;
  float v;
  if (exp == 15 && man == 7) v = NAN; /* the "fn" variant: no infinities */
  else if (exp == 0) v = ldexpf((float)man, -9);
  else v = ldexpf((float)(8 + man), (int)exp - 10);
  return (b & 0x80u) ? -v : v;
}

static uint64_t le(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

void df_st_convert(int dtype, const unsigned char *s, size_t count, float *d) {
  size_t i;
  switch (dtype) {
  case DF_ST_F32:
    for (i = 0; i < count; i++) d[i] = float_of((uint32_t)le(s + 4 * i, 4));
    break;
  case DF_ST_F64:
    for (i = 0; i < count; i++) {
      uint64_t u = le(s + 8 * i, 8);
      double v;
      memcpy(&v, &u, 8);
      d[i] = (float)v;
    }
    break;
  case DF_ST_F16:
    for (i = 0; i < count; i++) d[i] = df_st_f16_to_f32((uint16_t)le(s + 2 * i, 2));
    break;
  case DF_ST_BF16:
    for (i = 0; i < count; i++) d[i] = df_st_bf16_to_f32((uint16_t)le(s + 2 * i, 2));
    break;
  case DF_ST_I64:
    for (i = 0; i < count; i++) d[i] = (float)(int64_t)le(s + 8 * i, 8);
    break;
  case DF_ST_I32:
    for (i = 0; i < count; i++) d[i] = (float)(int32_t)(uint32_t)le(s + 4 * i, 4);
    break;
  case DF_ST_I16:
    for (i = 0; i < count; i++) d[i] = (float)(int16_t)(uint16_t)le(s + 2 * i, 2);
    break;
  case DF_ST_I8:
    for (i = 0; i < count; i++) d[i] = (float)(int8_t)s[i];
    break;
  case DF_ST_U64:
    for (i = 0; i < count; i++) d[i] = (float)le(s + 8 * i, 8);
    break;
  case DF_ST_U32:
    for (i = 0; i < count; i++) d[i] = (float)le(s + 4 * i, 4);
    break;
  case DF_ST_U16:
    for (i = 0; i < count; i++) d[i] = (float)le(s + 2 * i, 2);
    break;
  case DF_ST_U8:
    for (i = 0; i < count; i++) d[i] = (float)s[i];
    break;
  case DF_ST_BOOL:
    for (i = 0; i < count; i++) d[i] = s[i] ? 1.0f : 0.0f;
    break;
  case DF_ST_F8_E5M2:
    for (i = 0; i < count; i++) d[i] = df_st_f16_to_f32((uint16_t)(s[i] << 8));
    break;
  case DF_ST_F8_E4M3:
    for (i = 0; i < count; i++) d[i] = e4m3_to_f32(s[i]);
    break;
  default:
    for (i = 0; i < count; i++) d[i] = NAN;
  }
}

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 sequence at s (avail bytes available), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t avail) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  unsigned lo = 0x80, hi = 0xbf;
  size_t n;
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f; /* no surrogates */
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f; /* <= U+10FFFF */
  } else return 0;
  if (avail < n) return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xbf) return 0;
  return n;
}

int df_st_valid_utf8(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    size_t k = utf8_seq(p + i, n - i);
    if (!k) return 0;
    i += k;
  }
  return 1;
}

/* ---- the JSON reader ---- */

typedef struct jp {
  const unsigned char *s, *p, *end;
  char *err;
  size_t errn;
} jp;

static int syntax(jp *j, const char *what) {
  return fail(j->err, j->errn, "header is not valid JSON (byte %llu of the header): %s",
              (unsigned long long)(j->p - j->s), what);
}

static void ws(jp *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int peek(jp *j) { return j->p < j->end ? *j->p : -1; }

static int hex4(const unsigned char *p, unsigned *v) {
  unsigned x = 0;
  for (int i = 0; i < 4; i++) {
    unsigned c = p[i], d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return -1;
    x = x * 16 + d;
  }
  *v = x;
  return 0;
}

/* A string at j->p (the opening quote).  With out != NULL the decoded bytes are returned in a
 * malloc'd NUL-terminated buffer; otherwise the string is only checked. */
static int jstring(jp *j, char **out, size_t *outlen) {
  const unsigned char *q = j->p + 1, *end = j->end;
  while (q < end && *q != '"') {
    if (*q == '\\' && ++q >= end) break;
    q++;
  }
  if (q >= end) return syntax(j, "unterminated string");
  char *buf = NULL;
  size_t k = 0;
  if (out) {
    buf = malloc((size_t)(q - j->p)); /* decoded length <= raw length */
    if (!buf) return fail(j->err, j->errn, "out of memory reading the header");
  }
  const unsigned char *r = j->p + 1;
  while (r < q) {
    unsigned c = *r;
    if (c < 0x20) { j->p = r; free(buf); return syntax(j, "control character in a string"); }
    if (c == '\\') {
      unsigned e = r[1], cp;
      switch (e) {
      case '"': case '\\': case '/': cp = e; r += 2; break;
      case 'b': cp = '\b'; r += 2; break;
      case 'f': cp = '\f'; r += 2; break;
      case 'n': cp = '\n'; r += 2; break;
      case 'r': cp = '\r'; r += 2; break;
      case 't': cp = '\t'; r += 2; break;
      case 'u':
        if (q - r < 6 || hex4(r + 2, &cp)) {
          j->p = r; free(buf);
          return syntax(j, "bad \\u escape (4 hex digits expected)");
        }
        r += 6;
        if (cp >= 0xdc00 && cp <= 0xdfff) {
          j->p = r - 6; free(buf);
          return syntax(j, "unpaired low surrogate in a \\u escape");
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
          unsigned lo;
          if (q - r < 6 || r[0] != '\\' || r[1] != 'u' || hex4(r + 2, &lo) || lo < 0xdc00 || lo > 0xdfff) {
            j->p = r - 6; free(buf);
            return syntax(j, "unpaired high surrogate in a \\u escape");
          }
          cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          r += 6;
        }
        break;
      default:
        j->p = r; free(buf);
        return syntax(j, "bad escape sequence in a string");
      }
      if (buf) {
        if (cp < 0x80) buf[k++] = (char)cp;
        else if (cp < 0x800) {
          buf[k++] = (char)(0xc0 | (cp >> 6));
          buf[k++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
          buf[k++] = (char)(0xe0 | (cp >> 12));
          buf[k++] = (char)(0x80 | ((cp >> 6) & 0x3f));
          buf[k++] = (char)(0x80 | (cp & 0x3f));
        } else {
          buf[k++] = (char)(0xf0 | (cp >> 18));
          buf[k++] = (char)(0x80 | ((cp >> 12) & 0x3f));
          buf[k++] = (char)(0x80 | ((cp >> 6) & 0x3f));
          buf[k++] = (char)(0x80 | (cp & 0x3f));
        }
      }
    } else {
      size_t n = utf8_seq(r, (size_t)(q - r));
      if (!n) { j->p = r; free(buf); return syntax(j, "invalid UTF-8 in a string"); }
      if (buf) { memcpy(buf + k, r, n); k += n; }
      r += n;
    }
  }
  if (buf) {
    buf[k] = '\0';
    *out = buf;
    *outlen = k;
  }
  j->p = q + 1;
  return 0;
}

/* A number token in strict JSON grammar.  Reports its sign, whether it has a fraction or an
 * exponent, and its value when it is an integer that fits in int64 (big = 1 otherwise). */
typedef struct jnum { int neg, frac, big; uint64_t v; } jnum;

static int jnumber(jp *j, jnum *n) {
  memset(n, 0, sizeof *n);
  if (peek(j) == '-') { n->neg = 1; j->p++; }
  int c = peek(j);
  if (c == '0') j->p++;
  else if (c >= '1' && c <= '9') {
    while ((c = peek(j)) >= '0' && c <= '9') {
      unsigned d = (unsigned)(c - '0');
      if (n->v > (uint64_t)(INT64_MAX - d) / 10) n->big = 1;
      else n->v = n->v * 10 + d;
      j->p++;
    }
  } else return syntax(j, "bad number");
  if (peek(j) == '.') {
    n->frac = 1;
    j->p++;
    if (!((c = peek(j)) >= '0' && c <= '9')) return syntax(j, "bad number: digit expected after '.'");
    while ((c = peek(j)) >= '0' && c <= '9') j->p++;
  }
  if (peek(j) == 'e' || peek(j) == 'E') {
    n->frac = 1;
    j->p++;
    if (peek(j) == '+' || peek(j) == '-') j->p++;
    if (!((c = peek(j)) >= '0' && c <= '9')) return syntax(j, "bad number: digit expected in the exponent");
    while ((c = peek(j)) >= '0' && c <= '9') j->p++;
  }
  return 0;
}

static int jliteral(jp *j, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) return syntax(j, "unexpected character");
  j->p += n;
  return 0;
}

/* Check any JSON value at j->p (whitespace skipped before); depth is its nesting level, the
 * header object being level 1. */
/* Inside an object: one member's key and the ':' after it, white space skipped.  With key
 * != NULL the decoded key is returned as by jstring; on an error nothing stays allocated. */
static int jkey(jp *j, char **key, size_t *klen) {
  ws(j);
  if (peek(j) != '"') return syntax(j, "string key expected");
  if (jstring(j, key, klen)) return -1;
  ws(j);
  if (peek(j) != ':') {
    if (key) {
      free(*key);
      *key = NULL;
    }
    return syntax(j, "':' expected");
  }
  j->p++;
  return 0;
}

static int jskip(jp *j, int depth) {
  ws(j);
  int c = peek(j);
  if (c == '{' || c == '[') {
    if (depth > DF_ST_MAX_DEPTH) return syntax(j, "nested deeper than 64 levels");
    int close = c == '{' ? '}' : ']';
    j->p++;
    ws(j);
    if (peek(j) == close) { j->p++; return 0; }
    for (;;) {
      if (close == '}') {
        if (jkey(j, NULL, NULL)) return -1;
      }
      if (jskip(j, depth + 1)) return -1;
      ws(j);
      c = peek(j);
      if (c == ',') { j->p++; continue; }
      if (c == close) { j->p++; return 0; }
      return syntax(j, close == '}' ? "',' or '}' expected" : "',' or ']' expected");
    }
  }
  if (c == '"') return jstring(j, NULL, NULL);
  if (c == '-' || (c >= '0' && c <= '9')) { jnum n; return jnumber(j, &n); }
  if (c == 't') return jliteral(j, "true");
  if (c == 'f') return jliteral(j, "false");
  if (c == 'n') return jliteral(j, "null");
  if (c < 0) return syntax(j, "value expected, header ends");
  return syntax(j, "value expected");
}

/* ---- the header schema ---- */

static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return p;
  size_t c = *cap ? *cap : 8;
  while (c < need) c *= 2;
  void *q = realloc(p, c * elem);
  if (q) *cap = c;
  return q;
}

/* An integer field: non-negative, no fraction, fits int64.  what/name make the message. */
static int juint(jp *j, uint64_t *v, const char *what, const char *tname) {
  ws(j);
  int c = peek(j);
  if (!(c == '-' || (c >= '0' && c <= '9'))) {
    if (jskip(j, 4)) return -1;
    return fail(j->err, j->errn, "tensor '%s': %s is not a number", tname, what);
  }
  jnum n;
  if (jnumber(j, &n)) return -1;
  if (n.neg && (n.v != 0 || n.big || n.frac)) return fail(j->err, j->errn, "tensor '%s': %s is negative", tname, what);
  if (n.frac) return fail(j->err, j->errn, "tensor '%s': %s is not an integer", tname, what);
  if (n.neg) return fail(j->err, j->errn, "tensor '%s': %s is negative zero", tname, what);
  if (n.big) return fail(j->err, j->errn, "tensor '%s': %s is too large", tname, what);
  *v = n.v;
  return 0;
}

static int parse_tensor(jp *j, df_st_header *h, df_st_tensor *t) {
  char nm[72], what[48];
  show(t->name, t->name_len, nm, sizeof nm);
  ws(j);
  if (peek(j) != '{')
    return fail(j->err, j->errn, "tensor '%s': expected an object with dtype, shape and data_offsets", nm);
  j->p++;
  int have_dtype = 0, have_shape = 0, have_off = 0;
  ws(j);
  if (peek(j) == '}') j->p++;
  else for (;;) {
    char *key;
    size_t klen;
    if (jkey(j, &key, &klen)) return -1;
    ws(j);
    int field = (klen == 5 && !memcmp(key, "dtype", 5)) ? 1
              : (klen == 5 && !memcmp(key, "shape", 5)) ? 2
              : (klen == 12 && !memcmp(key, "data_offsets", 12)) ? 3 : 0;
    free(key);
    if ((field == 1 && have_dtype) || (field == 2 && have_shape) || (field == 3 && have_off))
      return fail(j->err, j->errn, "tensor '%s': duplicate field \"%s\"", nm,
                  field == 1 ? "dtype" : field == 2 ? "shape" : "data_offsets");
    if (field == 1) {
      if (peek(j) != '"') return fail(j->err, j->errn, "tensor '%s': dtype is not a string", nm);
      char *d;
      size_t dlen;
      if (jstring(j, &d, &dlen)) return -1;
      t->dtype = df_st_dtype_from_name(d, dlen);
      if (t->dtype < 0) {
        char dn[72];
        fail(j->err, j->errn, "tensor '%s': unknown or unsupported dtype '%s' (supported: F64 F32 F16 BF16 "
             "I64 I32 I16 I8 U64 U32 U16 U8 BOOL F8_E5M2 F8_E4M3)", nm, show(d, dlen, dn, sizeof dn));
        free(d);
        return -1;
      }
      free(d);
      have_dtype = 1;
    } else if (field == 2) {
      if (peek(j) != '[') return fail(j->err, j->errn, "tensor '%s': shape is not an array", nm);
      j->p++;
      t->shape_at = h->ndims;
      t->ndim = 0;
      ws(j);
      if (peek(j) == ']') j->p++;
      else for (;;) {
        if (t->ndim == DF_ST_MAX_NDIM)
          return fail(j->err, j->errn, "tensor '%s': shape has more than %d dimensions", nm, DF_ST_MAX_NDIM);
        uint64_t v;
        snprintf(what, sizeof what, "shape entry %d", t->ndim + 1);
        if (juint(j, &v, what, nm)) return -1;
        int64_t *dims = grow(h->dims, &h->dims_cap, h->ndims + 1, sizeof *dims);
        if (!dims) return fail(j->err, j->errn, "out of memory reading the header");
        h->dims = dims;
        h->dims[h->ndims++] = (int64_t)v;
        t->ndim++;
        ws(j);
        if (peek(j) == ',') { j->p++; continue; }
        if (peek(j) == ']') { j->p++; break; }
        return syntax(j, "',' or ']' expected");
      }
      have_shape = 1;
    } else if (field == 3) {
      if (peek(j) != '[') return fail(j->err, j->errn, "tensor '%s': data_offsets is not an array", nm);
      j->p++;
      ws(j);
      if (peek(j) == ']') return fail(j->err, j->errn, "tensor '%s': data_offsets must have 2 entries", nm);
      if (juint(j, &t->begin, "data_offsets[1]", nm)) return -1;
      ws(j);
      if (peek(j) != ',') {
        if (peek(j) == ']') return fail(j->err, j->errn, "tensor '%s': data_offsets must have 2 entries", nm);
        return syntax(j, "',' expected");
      }
      j->p++;
      if (juint(j, &t->end, "data_offsets[2]", nm)) return -1;
      ws(j);
      if (peek(j) == ',') return fail(j->err, j->errn, "tensor '%s': data_offsets must have 2 entries", nm);
      if (peek(j) != ']') return syntax(j, "']' expected");
      j->p++;
      have_off = 1;
    } else if (jskip(j, 3)) {
      return -1;
    }
    ws(j);
    if (peek(j) == ',') { j->p++; continue; }
    if (peek(j) == '}') { j->p++; break; }
    return syntax(j, "',' or '}' expected");
  }
  if (!have_dtype) return fail(j->err, j->errn, "tensor '%s': missing \"dtype\"", nm);
  if (!have_shape) return fail(j->err, j->errn, "tensor '%s': missing \"shape\"", nm);
  if (!have_off) return fail(j->err, j->errn, "tensor '%s': missing \"data_offsets\"", nm);
  /* The product of the non-zero dimensions must fit too, so that no later product of the
   * dimensions (in any order) can overflow, even for an empty tensor. */
  int64_t numel = 1;
  int over = 0, zero = 0;
  for (int i = 0; i < t->ndim; i++) {
    int64_t d = h->dims[t->shape_at + i];
    if (d == 0) zero = 1;
    else if (numel > INT64_MAX / d) over = 1;
    else numel *= d;
  }
  uint64_t esize = df_st_dtype_size(t->dtype);
  if (!over && (uint64_t)numel > UINT64_MAX / esize) over = 1;
  if (over) return fail(j->err, j->errn, "tensor '%s': shape is too large (element count * dtype size overflows)", nm);
  if (zero) numel = 0;
  t->numel = numel;
  if (t->begin > t->end)
    return fail(j->err, j->errn, "tensor '%s': data_offsets [%llu, %llu] end before they begin", nm,
                (unsigned long long)t->begin, (unsigned long long)t->end);
  uint64_t need = (uint64_t)numel * esize;
  if (t->end - t->begin != need)
    return fail(j->err, j->errn, "tensor '%s': data_offsets [%llu, %llu] span %llu bytes but its shape "
                "and dtype %s need %llu", nm, (unsigned long long)t->begin, (unsigned long long)t->end,
                (unsigned long long)(t->end - t->begin), dtypes[t->dtype].name, (unsigned long long)need);
  return 0;
}

static int parse_metadata(jp *j, df_st_header *h) {
  ws(j);
  if (peek(j) != '{') return fail(j->err, j->errn, "__metadata__ is not an object of string values");
  j->p++;
  ws(j);
  if (peek(j) == '}') { j->p++; return 0; }
  for (;;) {
    df_st_kv *m = grow(h->meta, &h->meta_cap, h->nmeta + 1, sizeof *m);
    if (!m) return fail(j->err, j->errn, "out of memory reading the header");
    h->meta = m;
    df_st_kv *kv = &h->meta[h->nmeta];
    memset(kv, 0, sizeof *kv);
    if (jkey(j, &kv->key, &kv->key_len)) return -1;
    h->nmeta++;
    ws(j);
    if (peek(j) != '"') {
      char kn[72];
      return fail(j->err, j->errn, "__metadata__ value for key '%s' is not a string",
                  show(kv->key, kv->key_len, kn, sizeof kn));
    }
    if (jstring(j, &kv->value, &kv->value_len)) return -1;
    ws(j);
    if (peek(j) == ',') { j->p++; continue; }
    if (peek(j) == '}') { j->p++; return 0; }
    return syntax(j, "',' or '}' expected");
  }
}

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn) {
  int c = memcmp(a, b, an < bn ? an : bn);
  if (c) return c;
  return an < bn ? -1 : an > bn;
}

static int by_name(const void *x, const void *y) {
  const df_st_tensor *a = x, *b = y;
  return bytes_cmp(a->name, a->name_len, b->name, b->name_len);
}

static int by_key(const void *x, const void *y) {
  const df_st_kv *a = x, *b = y;
  return bytes_cmp(a->key, a->key_len, b->key, b->key_len);
}

static int by_offset(const void *x, const void *y) {
  const df_st_tensor *a = x, *b = y;
  if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end) return a->end < b->end ? -1 : 1;
  return 0;
}

static int parse_top(jp *j, uint64_t data_size, df_st_header *h) {
  ws(j);
  if (peek(j) < 0) return fail(j->err, j->errn, "header is empty");
  if (peek(j) != '{') {
    if (peek(j) == '[' || peek(j) == '"' || peek(j) == '-' || (peek(j) >= '0' && peek(j) <= '9') ||
        peek(j) == 't' || peek(j) == 'f' || peek(j) == 'n') {
      if (jskip(j, 1)) return -1;
      return fail(j->err, j->errn, "header is not a JSON object");
    }
    return syntax(j, "'{' expected");
  }
  j->p++;
  int have_meta = 0;
  ws(j);
  if (peek(j) == '}') j->p++;
  else for (;;) {
    char *key;
    size_t klen;
    if (jkey(j, &key, &klen)) return -1;
    if (klen == 12 && !memcmp(key, "__metadata__", 12)) {
      free(key);
      if (have_meta) return fail(j->err, j->errn, "duplicate key \"__metadata__\"");
      have_meta = 1;
      if (parse_metadata(j, h)) return -1;
    } else {
      df_st_tensor *ts = grow(h->tensors, &h->tensors_cap, h->ntensors + 1, sizeof *ts);
      if (!ts) { free(key); return fail(j->err, j->errn, "out of memory reading the header"); }
      h->tensors = ts;
      df_st_tensor *t = &h->tensors[h->ntensors++];
      memset(t, 0, sizeof *t);
      t->name = key;
      t->name_len = klen;
      if (parse_tensor(j, h, t)) return -1;
    }
    ws(j);
    if (peek(j) == ',') { j->p++; continue; }
    if (peek(j) == '}') { j->p++; break; }
    return syntax(j, "',' or '}' expected");
  }
  ws(j);
  if (j->p != j->end) return syntax(j, "unexpected characters after the header object");

  char a[72], b[72];
  if (h->ntensors > 1) {
    qsort(h->tensors, h->ntensors, sizeof *h->tensors, by_name);
    for (size_t i = 1; i < h->ntensors; i++)
      if (!by_name(&h->tensors[i - 1], &h->tensors[i]))
        return fail(j->err, j->errn, "duplicate tensor name '%s'",
                    show(h->tensors[i].name, h->tensors[i].name_len, a, sizeof a));
  }
  if (h->nmeta > 1) {
    qsort(h->meta, h->nmeta, sizeof *h->meta, by_key);
    for (size_t i = 1; i < h->nmeta; i++)
      if (!by_key(&h->meta[i - 1], &h->meta[i]))
        return fail(j->err, j->errn, "duplicate __metadata__ key '%s'",
                    show(h->meta[i].key, h->meta[i].key_len, a, sizeof a));
  }
  for (size_t i = 0; i < h->ntensors; i++) {
    df_st_tensor *t = &h->tensors[i];
    if (t->end > data_size)
      return fail(j->err, j->errn, "tensor '%s': data_offsets [%llu, %llu] go past the end of the "
                  "data buffer (%llu bytes): file truncated?", show(t->name, t->name_len, a, sizeof a),
                  (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)data_size);
  }
  if (h->ntensors > 1) qsort(h->tensors, h->ntensors, sizeof *h->tensors, by_offset);
  uint64_t pos = 0;
  for (size_t i = 0; i < h->ntensors; i++) {
    df_st_tensor *t = &h->tensors[i];
    if (t->begin > pos)
      return fail(j->err, j->errn, "hole in the data buffer: bytes %llu..%llu before tensor '%s' belong "
                  "to no tensor", (unsigned long long)pos, (unsigned long long)t->begin,
                  show(t->name, t->name_len, a, sizeof a));
    if (t->begin < pos)
      return fail(j->err, j->errn, "tensors '%s' and '%s' overlap in the data buffer",
                  show(h->tensors[i - 1].name, h->tensors[i - 1].name_len, a, sizeof a),
                  show(t->name, t->name_len, b, sizeof b));
    pos = t->end;
  }
  if (pos != data_size)
    return fail(j->err, j->errn, "data buffer has %llu bytes but the tensors cover %llu: %llu trailing "
                "bytes belong to no tensor", (unsigned long long)data_size, (unsigned long long)pos,
                (unsigned long long)(data_size - pos));
  for (size_t i = 0; i < h->ntensors; i++) h->tensors[i].shape = h->dims ? h->dims + h->tensors[i].shape_at : NULL;
  h->data_size = data_size;
  return 0;
}

void df_st_free(df_st_header *h) {
  for (size_t i = 0; i < h->ntensors; i++) free(h->tensors[i].name);
  for (size_t i = 0; i < h->nmeta; i++) { free(h->meta[i].key); free(h->meta[i].value); }
  free(h->tensors);
  free(h->meta);
  free(h->dims);
  memset(h, 0, sizeof *h);
}

int df_st_parse_json(const char *json, size_t n, uint64_t data_size, df_st_header *h,
                     char *err, size_t errn) {
  memset(h, 0, sizeof *h);
  jp j = {(const unsigned char *)json, (const unsigned char *)json, (const unsigned char *)json + n, err, errn};
  if (parse_top(&j, data_size, h)) {
    df_st_free(h);
    return -1;
  }
  h->header_len = n;
  return 0;
}

static int check_length(uint64_t total, uint64_t hlen, char *err, size_t errn) {
  if (hlen > DF_ST_MAX_HEADER)
    return fail(err, errn, "header length %llu exceeds the limit of %u bytes: not a safetensors file?",
                (unsigned long long)hlen, DF_ST_MAX_HEADER);
  if (hlen > total - 8)
    return fail(err, errn, "header length %llu is larger than the rest of the file (%llu bytes): "
                "file truncated or not a safetensors file", (unsigned long long)hlen,
                (unsigned long long)(total - 8));
  return 0;
}

int df_st_parse_buffer(const unsigned char *buf, size_t n, df_st_header *h, char *err, size_t errn) {
  memset(h, 0, sizeof *h);
  if (n < 8) return fail(err, errn, "file is too short (%llu bytes) to hold the 8-byte header length",
                         (unsigned long long)n);
  uint64_t hlen = le(buf, 8);
  if (check_length(n, hlen, err, errn)) return -1;
  return df_st_parse_json((const char *)buf + 8, (size_t)hlen, n - 8 - hlen, h, err, errn);
}

int df_st_read_header(FILE *fp, uint64_t file_size, df_st_header *h, char *err, size_t errn) {
  memset(h, 0, sizeof *h);
  unsigned char lenbuf[8];
  if (file_size < 8) return fail(err, errn, "file is too short (%llu bytes) to hold the 8-byte header length",
                                 (unsigned long long)file_size);
  if (fseeko(fp, 0, SEEK_SET) != 0 || fread(lenbuf, 1, 8, fp) != 8)
    return fail(err, errn, "cannot read the header length: %s", ferror(fp) ? strerror(errno) : "file truncated");
  uint64_t hlen = le(lenbuf, 8);
  if (check_length(file_size, hlen, err, errn)) return -1;
  char *json = malloc(hlen ? (size_t)hlen : 1);
  if (!json) return fail(err, errn, "out of memory for a %llu-byte header", (unsigned long long)hlen);
  if (fread(json, 1, (size_t)hlen, fp) != (size_t)hlen) {
    free(json);
    return fail(err, errn, "cannot read the header: %s", ferror(fp) ? strerror(errno) : "file truncated");
  }
  int rc = df_st_parse_json(json, (size_t)hlen, file_size - 8 - hlen, h, err, errn);
  free(json);
  return rc;
}

int df_st_read_tensor(FILE *fp, const df_st_header *h, const df_st_tensor *t, float *dst,
                      char *err, size_t errn) {
  char nm[72];
  size_t esize = df_st_dtype_size(t->dtype);
  uint64_t total = t->end - t->begin;
  if (total == 0) return 0;
  uint64_t at = 8 + h->header_len + t->begin;
  if (at > (uint64_t)INT64_MAX || fseeko(fp, (off_t)at, SEEK_SET) != 0)
    return fail(err, errn, "tensor '%s': cannot seek to its data: %s", show(t->name, t->name_len, nm, sizeof nm),
                strerror(errno));
  size_t chunk = (size_t)1 << 20; /* a multiple of every element size */
  if (total < chunk) chunk = (size_t)total;
  unsigned char *buf = malloc(chunk);
  if (!buf) return fail(err, errn, "out of memory reading tensor '%s'", show(t->name, t->name_len, nm, sizeof nm));
  uint64_t done = 0;
  while (done < total) {
    size_t n = (total - done < chunk) ? (size_t)(total - done) : chunk;
    if (fread(buf, 1, n, fp) != n) {
      int e = ferror(fp) ? errno : 0;
      free(buf);
      return fail(err, errn, "tensor '%s': cannot read its data: %s", show(t->name, t->name_len, nm, sizeof nm),
                  e ? strerror(e) : "file truncated");
    }
    df_st_convert(t->dtype, buf, n / esize, dst + done / esize);
    done += n;
  }
  free(buf);
  return 0;
}

/* ---- the writer ---- */

typedef struct sbuf { char *p; size_t n, cap; int oom; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t c = b->cap ? b->cap : 256;
    while (c < b->n + n + 1) c *= 2;
    char *q = realloc(b->p, c);
    if (!q) { b->oom = 1; return; }
    b->p = q;
    b->cap = c;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s, size_t n) {
  sb_add(b, "\"", 1);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    char u[8];
    if (c == '"') esc = "\\\"";
    else if (c == '\\') esc = "\\\\";
    else if (c == '\n') esc = "\\n";
    else if (c == '\t') esc = "\\t";
    else if (c == '\r') esc = "\\r";
    else if (c == '\b') esc = "\\b";
    else if (c == '\f') esc = "\\f";
    else if (c < 0x20) { snprintf(u, sizeof u, "\\u%04x", c); esc = u; }
    if (esc) {
      sb_add(b, s + i - run, run);
      run = 0;
      sb_str(b, esc);
    } else run++;
  }
  sb_add(b, s + n - run, run);
  sb_add(b, "\"", 1);
}

static void put_u16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }

static int write_tensor(FILE *fp, const df_tensor *t, int dtype, unsigned char *buf, size_t cap) {
  int64_t sh[4], st[4];
  int lead = DF_MAXDIM - t->ndim;
  for (int i = 0; i < lead; i++) { sh[i] = 1; st[i] = 0; }
  for (int i = 0; i < t->ndim; i++) { sh[lead + i] = t->shape[i]; st[lead + i] = t->stride[i]; }
  size_t es = df_st_dtype_size(dtype), k = 0;
  for (int64_t a = 0; a < sh[0]; a++)
    for (int64_t b = 0; b < sh[1]; b++)
      for (int64_t c = 0; c < sh[2]; c++) {
        const float *row = t->data + a * st[0] + b * st[1] + c * st[2];
        for (int64_t d = 0; d < sh[3]; d++) {
          float v = row[d * st[3]];
          if (dtype == DF_ST_F32) {
            uint32_t u = bits_of(v);
            buf[k] = (unsigned char)u; buf[k + 1] = (unsigned char)(u >> 8);
            buf[k + 2] = (unsigned char)(u >> 16); buf[k + 3] = (unsigned char)(u >> 24);
          } else if (dtype == DF_ST_F16) put_u16(buf + k, df_st_f32_to_f16(v));
          else put_u16(buf + k, df_st_f32_to_bf16(v));
          k += es;
          if (k + es > cap) {
            if (fwrite(buf, 1, k, fp) != k) return -1;
            k = 0;
          }
        }
      }
  if (k && fwrite(buf, 1, k, fp) != k) return -1;
  return 0;
}

int df_st_write(FILE *fp, const df_st_entry *tensors, size_t n, const df_st_kv *meta,
                size_t nmeta, int dtype, char *err, size_t errn) {
  char nm[72];
  if (dtype != DF_ST_F32 && dtype != DF_ST_F16 && dtype != DF_ST_BF16)
    return fail(err, errn, "cannot write dtype %s (F32, F16 or BF16 only)", df_st_dtype_name(dtype));
  for (size_t i = 0; i < nmeta; i++) {
    if (!df_st_valid_utf8(meta[i].key, meta[i].key_len))
      return fail(err, errn, "metadata key '%s' is not valid UTF-8", show(meta[i].key, meta[i].key_len, nm, sizeof nm));
    if (!df_st_valid_utf8(meta[i].value, meta[i].value_len))
      return fail(err, errn, "metadata value for key '%s' is not valid UTF-8",
                  show(meta[i].key, meta[i].key_len, nm, sizeof nm));
  }
  for (size_t i = 0; i < n; i++) {
    if (!df_st_valid_utf8(tensors[i].name, tensors[i].name_len))
      return fail(err, errn, "tensor name '%s' is not valid UTF-8", show(tensors[i].name, tensors[i].name_len, nm, sizeof nm));
    if (tensors[i].name_len == 12 && !memcmp(tensors[i].name, "__metadata__", 12))
      return fail(err, errn, "\"__metadata__\" cannot be a tensor name");
    /* The reader requires the product of the non-zero dimensions times the element size to
     * fit in 64 bits (even for an empty tensor); never write a file it would reject. */
    const df_tensor *t = tensors[i].t;
    uint64_t prod = df_st_dtype_size(dtype);
    for (int d = 0; d < t->ndim; d++) {
      uint64_t dim = (uint64_t)t->shape[d];
      if (dim == 0) continue;
      if (prod > (uint64_t)INT64_MAX / dim)
        return fail(err, errn, "tensor '%s': shape is too large for the format",
                    show(tensors[i].name, tensors[i].name_len, nm, sizeof nm));
      prod *= dim;
    }
  }
  sbuf b = {0};
  char num[64];
  sb_str(&b, "{");
  if (nmeta) {
    sb_str(&b, "\"__metadata__\":{");
    for (size_t i = 0; i < nmeta; i++) {
      if (i) sb_str(&b, ",");
      sb_json_string(&b, meta[i].key, meta[i].key_len);
      sb_str(&b, ":");
      sb_json_string(&b, meta[i].value, meta[i].value_len);
    }
    sb_str(&b, "}");
  }
  uint64_t off = 0;
  size_t es = df_st_dtype_size(dtype);
  for (size_t i = 0; i < n; i++) {
    const df_tensor *t = tensors[i].t;
    if (i || nmeta) sb_str(&b, ",");
    sb_json_string(&b, tensors[i].name, tensors[i].name_len);
    sb_str(&b, ":{\"dtype\":\"");
    sb_str(&b, dtypes[dtype].name);
    sb_str(&b, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) {
      snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)t->shape[d]);
      sb_str(&b, num);
    }
    uint64_t bytes = (uint64_t)df_numel(t) * es;
    snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
             (unsigned long long)(off + bytes));
    sb_str(&b, num);
    off += bytes;
  }
  sb_str(&b, "}");
  while (!b.oom && b.n % 8) sb_add(&b, " ", 1);
  if (b.oom) {
    free(b.p);
    return fail(err, errn, "out of memory building the header");
  }
  unsigned char lenbuf[8];
  for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)b.n >> (8 * i));
  int ok = fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(b.p, 1, b.n, fp) == b.n;
  free(b.p);
  size_t cap = (size_t)1 << 16;
  unsigned char *buf = ok ? malloc(cap) : NULL;
  if (ok && !buf) return fail(err, errn, "out of memory");
  for (size_t i = 0; ok && i < n; i++)
    if (df_numel(tensors[i].t) > 0 && write_tensor(fp, tensors[i].t, dtype, buf, cap)) ok = 0;
  free(buf);
  if (!ok) return fail(err, errn, "write failed: %s", strerror(errno ? errno : EIO));
  return 0;
}
