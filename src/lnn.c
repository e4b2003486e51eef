/* Bindings of the diffuse.nn kernels (nn.h), registered as the internal table
 * diffuse.core._nn.  lua/diffuse/nn.lua wraps them in layers and does the user-facing checks
 * (which layer, which shapes); these functions still check every argument, since specs and
 * curious users can reach them.  Outputs are new tensors unless the name ends in "_". */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ltensor.h"
#include "nn.h"
#include "rng.h"

/* A contiguous tensor at arg with ndim dimensions (any when ndim is 0). */
static df_tensor *dense(lua_State *L, int arg, const char *name, int ndim) {
  df_tensor *t = df_checktensor(L, arg);
  char buf[96];
  if ((ndim && t->ndim != ndim) || !df_is_contiguous(t))
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be a contiguous %s tensor, got %s%s", name,
                                          ndim == 1 ? "1-d" : ndim == 2 ? "2-d" : ndim == 4 ? "4-d" : "",
                                          df_shape_str(t, buf, sizeof buf),
                                          df_is_contiguous(t) ? "" : " (not contiguous)"));
  return t;
}

static df_tensor *opt_dense(lua_State *L, int arg, const char *name, int ndim) {
  return lua_isnoneornil(L, arg) ? NULL : dense(L, arg, name, ndim);
}

static void need_numel(lua_State *L, int arg, const char *name, const df_tensor *t, int64_t n) {
  if (t && df_numel(t) != n) {
    char buf[96];
    luaL_argerror(L, arg, lua_pushfstring(L, "%s has shape %s, expected %d elements", name,
                                          df_shape_str(t, buf, sizeof buf), (int)n));
  }
}

static void check_status(lua_State *L, const char *fn, int st) {
  if (st) luaL_error(L, "%s: %s", fn, df_nn_strerror(st));
}

static df_tensor *new2(lua_State *L, int64_t a, int64_t b) {
  int64_t s[2] = {a, b};
  return df_newtensor(L, 2, s);
}

static df_tensor *new1(lua_State *L, int64_t a) { return df_newtensor(L, 1, &a); }

static int64_t check_pos(lua_State *L, int arg, const char *name, int64_t lo) {
  lua_Integer v = luaL_checkinteger(L, arg);
  if (v < lo) luaL_argerror(L, arg, lua_pushfstring(L, "%s must be >= %d, got %d", name, (int)lo, (int)v));
  return (int64_t)v;
}

/* Labels tensor (1-d, integer values in [0, limit)) -> int64 array (a userdata pushed on the
 * stack). */
static int64_t *labels_of(lua_State *L, int arg, int64_t limit, int64_t *count) {
  df_tensor *t = dense(L, arg, "labels", 1);
  int64_t n = t->shape[0];
  int64_t *idx = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(n > 0 ? n : 1), 0);
  for (int64_t i = 0; i < n; i++) {
    float v = t->data[i];
    if (!(v >= 0 && v < (float)limit) || v != floorf(v))
      luaL_argerror(L, arg, lua_pushfstring(L, "labels[%d] = %f is not an integer in 0 .. %d", (int)(i + 1),
                                            (double)v, (int)(limit - 1)));
    idx[i] = (int64_t)v;
  }
  *count = n;
  return idx;
}

/* linear_fwd(x (N, in), w (out, in), b (out) | nil, r (N, out) | nil) -> y */
static int l_linear_fwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 2), *w = dense(L, 2, "weight", 2);
  df_tensor *b = opt_dense(L, 3, "bias", 1), *r = opt_dense(L, 4, "residual", 2);
  int64_t n = x->shape[0], in = x->shape[1], out = w->shape[0];
  if (w->shape[1] != in) return df_shape_mismatch(L, 2, "weight", w, "x", x);
  need_numel(L, 3, "bias", b, out);
  need_numel(L, 4, "residual", r, n * out);
  df_tensor *y = new2(L, n, out);
  check_status(L, "linear", df_nn_linear_fwd(x->data, n, in, w->data, out, b ? b->data : NULL, r ? r->data : NULL, y->data));
  return 1;
}

/* linear_bwd(x, dy, w, want_dx, dw | nil, db | nil) -> dx | nil */
static int l_linear_bwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 2), *dy = dense(L, 2, "dy", 2), *w = dense(L, 3, "weight", 2);
  int want = lua_toboolean(L, 4);
  df_tensor *dw = opt_dense(L, 5, "dw", 2), *db = opt_dense(L, 6, "db", 1);
  int64_t n = x->shape[0], in = x->shape[1], out = w->shape[0];
  if (w->shape[1] != in) return df_shape_mismatch(L, 3, "weight", w, "x", x);
  if (dy->shape[0] != n || dy->shape[1] != out) return df_shape_mismatch(L, 2, "dy", dy, "x", x);
  need_numel(L, 5, "dw", dw, out * in);
  need_numel(L, 6, "db", db, out);
  lua_settop(L, 6);
  df_tensor *dx = want ? new2(L, n, in) : NULL;
  if (!want) lua_pushnil(L);
  check_status(L, "linear backward", df_nn_linear_bwd(x->data, dy->data, n, in, w->data, out, dx ? dx->data : NULL,
                                                      dw ? dw->data : NULL, db ? db->data : NULL));
  return 1;
}

/* film_silu_fwd(h, ss | nil) -> silu(h (1 + scale) + shift); h any shape when ss is nil. */
static int l_film_silu_fwd(lua_State *L) {
  df_tensor *ss = opt_dense(L, 2, "scale_shift", 2);
  df_tensor *h = dense(L, 1, "h", ss ? 2 : 0);
  int64_t n = ss ? h->shape[0] : 1, d = ss ? h->shape[1] : df_numel(h);
  if (ss && (ss->shape[0] != n || ss->shape[1] != 2 * d))
    return df_shape_mismatch(L, 2, "scale_shift", ss, "h", h);
  df_tensor *a = df_newlike(L, h);
  df_nn_film_silu_fwd(h->data, ss ? ss->data : NULL, n, d, a->data);
  return 1;
}

/* film_silu_bwd(h, ss | nil, da) -> dh, dss | nil */
static int l_film_silu_bwd(lua_State *L) {
  df_tensor *ss = opt_dense(L, 2, "scale_shift", 2);
  df_tensor *h = dense(L, 1, "h", ss ? 2 : 0), *da = dense(L, 3, "da", 0);
  if (!df_same_shape(h, da)) return df_shape_mismatch(L, 3, "da", da, "h", h);
  int64_t n = ss ? h->shape[0] : 1, d = ss ? h->shape[1] : df_numel(h);
  if (ss && (ss->shape[0] != n || ss->shape[1] != 2 * d))
    return df_shape_mismatch(L, 2, "scale_shift", ss, "h", h);
  lua_settop(L, 3);
  df_tensor *dh = df_newlike(L, h);
  df_tensor *dss = ss ? df_newlike(L, ss) : NULL;
  if (!ss) lua_pushnil(L);
  df_nn_film_silu_bwd(h->data, ss ? ss->data : NULL, da->data, n, d, dh->data, dss ? dss->data : NULL);
  return 2;
}

static int l_gelu_fwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 0);
  df_tensor *y = df_newlike(L, x);
  df_nn_gelu_fwd(x->data, df_numel(x), y->data);
  return 1;
}

static int l_gelu_bwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 0), *dy = dense(L, 2, "dy", 0);
  if (!df_same_shape(x, dy)) return df_shape_mismatch(L, 2, "dy", dy, "x", x);
  df_tensor *dx = df_newlike(L, x);
  df_nn_gelu_bwd(x->data, dy->data, df_numel(x), dx->data);
  return 1;
}

/* layernorm_fwd(x (N, D), g (D), b (D), eps) -> y, mean, rstd */
static int l_layernorm_fwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 2), *g = dense(L, 2, "weight", 1), *b = dense(L, 3, "bias", 1);
  float eps = (float)luaL_checknumber(L, 4);
  int64_t n = x->shape[0], d = x->shape[1];
  need_numel(L, 2, "weight", g, d);
  need_numel(L, 3, "bias", b, d);
  lua_settop(L, 4);
  df_tensor *y = df_newlike(L, x), *mean = new1(L, n), *rstd = new1(L, n);
  df_nn_layernorm_fwd(x->data, n, d, g->data, b->data, eps, y->data, mean->data, rstd->data);
  return 3;
}

/* layernorm_bwd(x, dy, g, mean, rstd, want_dx, dg | nil, db | nil) -> dx | nil */
static int l_layernorm_bwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 2), *dy = dense(L, 2, "dy", 2), *g = dense(L, 3, "weight", 1);
  df_tensor *mean = dense(L, 4, "mean", 1), *rstd = dense(L, 5, "rstd", 1);
  int want = lua_toboolean(L, 6);
  df_tensor *dg = opt_dense(L, 7, "dg", 1), *db = opt_dense(L, 8, "db", 1);
  int64_t n = x->shape[0], d = x->shape[1];
  if (!df_same_shape(x, dy)) return df_shape_mismatch(L, 2, "dy", dy, "x", x);
  need_numel(L, 3, "weight", g, d);
  need_numel(L, 4, "mean", mean, n);
  need_numel(L, 5, "rstd", rstd, n);
  need_numel(L, 7, "dg", dg, d);
  need_numel(L, 8, "db", db, d);
  lua_settop(L, 8);
  df_tensor *dx = want ? df_newlike(L, x) : NULL;
  if (!want) lua_pushnil(L);
  df_nn_layernorm_bwd(x->data, dy->data, n, d, g->data, mean->data, rstd->data, dx ? dx->data : NULL,
                      dg ? dg->data : NULL, db ? db->data : NULL);
  return 1;
}

static int64_t plane(const df_tensor *x) {
  int64_t hw = 1;
  for (int i = 2; i < x->ndim; i++) hw *= x->shape[i];
  return hw;
}

static df_tensor *nc_tensor(lua_State *L, int arg, const char *name) {
  df_tensor *x = dense(L, arg, name, 0);
  char buf[96];
  if (x->ndim < 2)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be (N, C, ...), got %s", name, df_shape_str(x, buf, sizeof buf)));
  return x;
}

static int64_t check_groups(lua_State *L, int arg, int64_t c) {
  int64_t g = check_pos(L, arg, "groups", 1);
  if (c % g) luaL_argerror(L, arg, lua_pushfstring(L, "groups (%d) must divide the channels (%d)", (int)g, (int)c));
  return g;
}

/* groupnorm_fwd(x (N, C, ...), groups, g (C), b (C), eps) -> y, mean, rstd */
static int l_groupnorm_fwd(lua_State *L) {
  df_tensor *x = nc_tensor(L, 1, "x");
  int64_t n = x->shape[0], c = x->shape[1], hw = plane(x), groups = check_groups(L, 2, c);
  df_tensor *g = dense(L, 3, "weight", 1), *b = dense(L, 4, "bias", 1);
  float eps = (float)luaL_checknumber(L, 5);
  need_numel(L, 3, "weight", g, c);
  need_numel(L, 4, "bias", b, c);
  lua_settop(L, 5);
  df_tensor *y = df_newlike(L, x), *mean = new1(L, n * groups), *rstd = new1(L, n * groups);
  df_nn_groupnorm_fwd(x->data, n, c, hw, groups, g->data, b->data, eps, y->data, mean->data, rstd->data);
  return 3;
}

/* groupnorm_bwd(x, dy, groups, g, mean, rstd, want_dx, dg | nil, db | nil) -> dx | nil */
static int l_groupnorm_bwd(lua_State *L) {
  df_tensor *x = nc_tensor(L, 1, "x"), *dy = dense(L, 2, "dy", 0);
  int64_t n = x->shape[0], c = x->shape[1], hw = plane(x), groups = check_groups(L, 3, c);
  df_tensor *g = dense(L, 4, "weight", 1), *mean = dense(L, 5, "mean", 1), *rstd = dense(L, 6, "rstd", 1);
  int want = lua_toboolean(L, 7);
  df_tensor *dg = opt_dense(L, 8, "dg", 1), *db = opt_dense(L, 9, "db", 1);
  if (!df_same_shape(x, dy)) return df_shape_mismatch(L, 2, "dy", dy, "x", x);
  need_numel(L, 4, "weight", g, c);
  need_numel(L, 5, "mean", mean, n * groups);
  need_numel(L, 6, "rstd", rstd, n * groups);
  need_numel(L, 8, "dg", dg, c);
  need_numel(L, 9, "db", db, c);
  lua_settop(L, 9);
  df_tensor *dx = want ? df_newlike(L, x) : NULL;
  if (!want) lua_pushnil(L);
  df_nn_groupnorm_bwd(x->data, dy->data, n, c, hw, groups, g->data, mean->data, rstd->data, dx ? dx->data : NULL,
                      dg ? dg->data : NULL, db ? db->data : NULL);
  return 1;
}

/* sinusoidal(t (N), dim, max_period) -> (N, dim) */
static int l_sinusoidal(lua_State *L) {
  df_tensor *t = dense(L, 1, "t", 1);
  int64_t dim = check_pos(L, 2, "dim", 1);
  double mp = luaL_checknumber(L, 3);
  luaL_argcheck(L, mp > 0 && isfinite(mp), 3, "max_period must be a positive number");
  df_tensor *out = new2(L, t->shape[0], dim);
  df_nn_sinusoidal(t->data, t->shape[0], dim, mp, out->data);
  return 1;
}

/* embedding_fwd(table (K, D), labels (N)) -> (N, D) */
static int l_embedding_fwd(lua_State *L) {
  df_tensor *tab = dense(L, 1, "table", 2);
  int64_t n;
  int64_t *idx = labels_of(L, 2, tab->shape[0], &n);
  df_tensor *out = new2(L, n, tab->shape[1]);
  df_nn_embedding_fwd(tab->data, idx, n, tab->shape[1], out->data);
  return 1;
}

/* embedding_bwd(labels (N), dout (N, D), dtable (K, D)) accumulates into dtable. */
static int l_embedding_bwd(lua_State *L) {
  df_tensor *dout = dense(L, 2, "dout", 2), *dt = dense(L, 3, "dtable", 2);
  int64_t n;
  int64_t *idx = labels_of(L, 1, dt->shape[0], &n);
  if (dout->shape[0] != n || dout->shape[1] != dt->shape[1]) return df_shape_mismatch(L, 2, "dout", dout, "dtable", dt);
  df_nn_embedding_bwd(idx, dout->data, n, dt->shape[1], dt->data);
  return 0;
}

static uint64_t check_u64(lua_State *L, int arg, const char *name) {
  lua_Integer v = luaL_checkinteger(L, arg);
  if (v < 0) luaL_argerror(L, arg, lua_pushfstring(L, "%s must be >= 0", name));
  return (uint64_t)v;
}

static float check_prob(lua_State *L, int arg) {
  double p = luaL_checknumber(L, arg);
  luaL_argcheck(L, p >= 0 && p < 1, arg, "p must be in [0, 1)");
  return (float)p;
}

/* dropout(x (N, ...), p, seed, draw) -> y; the same call on dy gives the backward. */
static int l_dropout(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 0);
  float p = check_prob(L, 2);
  uint64_t seed = check_u64(L, 3, "seed"), draw = check_u64(L, 4, "draw");
  luaL_argcheck(L, draw <= UINT32_MAX, 4, "draw must be < 2^32");
  int64_t n = x->ndim >= 2 ? x->shape[0] : 1, d = n > 0 ? df_numel(x) / n : 0;
  df_tensor *y = df_newlike(L, x);
  const char *err = df_nn_dropout(x->data, n, d, p, seed, draw, y->data);
  if (err) return luaL_error(L, "dropout: %s", err);
  return 1;
}

/* drop_labels(labels (N), p, seed, draw, null) -> labels with each replaced by null with
 * probability p (uniform of Philox row i at the draw). */
static int l_drop_labels(lua_State *L) {
  df_tensor *lab = dense(L, 1, "labels", 1);
  float p = (float)luaL_checknumber(L, 2);
  luaL_argcheck(L, p >= 0 && p <= 1, 2, "p must be in [0, 1]");
  uint64_t seed = check_u64(L, 3, "seed"), draw = check_u64(L, 4, "draw");
  luaL_argcheck(L, draw <= UINT32_MAX, 4, "draw must be < 2^32");
  float null = (float)luaL_checknumber(L, 5);
  int64_t n = lab->shape[0];
  df_tensor *u = new2(L, n, 1);
  const char *err = df_rng_fill(u, DF_RNG_UNIFORM, seed, 0, draw);
  if (err) return luaL_error(L, "drop_labels: %s", err);
  for (int64_t i = 0; i < n; i++) u->data[i] = u->data[i] < p ? null : lab->data[i];
  u->ndim = 1;
  df_set_contiguous_strides(u);
  return 1;
}

/* avgpool_fwd(x (N, C, H, W), k) -> (N, C, H/k, W/k) */
static int l_avgpool_fwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 4);
  int64_t k = check_pos(L, 2, "k", 1);
  int64_t s[4] = {x->shape[0], x->shape[1], x->shape[2] / k, x->shape[3] / k};
  df_tensor *y = df_newtensor(L, 4, s);
  df_nn_avgpool_fwd(x->data, s[0] * s[1], x->shape[2], x->shape[3], k, y->data);
  return 1;
}

/* avgpool_bwd(dy, x, k) -> dx shaped like x */
static int l_avgpool_bwd(lua_State *L) {
  df_tensor *dy = dense(L, 1, "dy", 4), *x = dense(L, 2, "x", 4);
  int64_t k = check_pos(L, 3, "k", 1);
  if (dy->shape[0] != x->shape[0] || dy->shape[1] != x->shape[1] || dy->shape[2] != x->shape[2] / k ||
      dy->shape[3] != x->shape[3] / k)
    return df_shape_mismatch(L, 1, "dy", dy, "x", x);
  df_tensor *dx = df_newlike(L, x);
  df_nn_avgpool_bwd(dy->data, x->shape[0] * x->shape[1], x->shape[2], x->shape[3], k, dx->data);
  return 1;
}

/* add_channel_(x (N, C, ...), v (N, C)) in place: x[n, c, ...] += v[n, c]; returns x. */
static int l_add_channel_(lua_State *L) {
  df_tensor *x = nc_tensor(L, 1, "x"), *v = dense(L, 2, "v", 2);
  if (v->shape[0] != x->shape[0] || v->shape[1] != x->shape[1]) return df_shape_mismatch(L, 2, "v", v, "x", x);
  df_nn_add_channel(x->data, v->data, x->shape[0] * x->shape[1], plane(x));
  lua_settop(L, 1);
  return 1;
}

/* channel_sum(x (N, C, ...)) -> (N, C) sums over the remaining dimensions. */
static int l_channel_sum(lua_State *L) {
  df_tensor *x = nc_tensor(L, 1, "x");
  df_tensor *v = new2(L, x->shape[0], x->shape[1]);
  df_nn_channel_sum(x->data, x->shape[0] * x->shape[1], plane(x), v->data);
  return 1;
}

typedef struct {
  int64_t n, c, h, w, o, k, s, p, ho, wo;
} conv_args;

static void conv_check(lua_State *L, df_tensor *x, df_tensor *w, int sarg, conv_args *a) {
  a->s = check_pos(L, sarg, "stride", 1);
  a->p = check_pos(L, sarg + 1, "padding", 0);
  a->n = x->shape[0]; a->c = x->shape[1]; a->h = x->shape[2]; a->w = x->shape[3];
  a->o = w->shape[0]; a->k = w->shape[2];
  if (w->shape[1] != a->c || w->shape[3] != a->k) df_shape_mismatch(L, 2, "weight", w, "x", x);
  if (a->h + 2 * a->p < a->k || a->w + 2 * a->p < a->k)
    luaL_argerror(L, 1, "input smaller than the kernel (with padding)");
  a->ho = (a->h + 2 * a->p - a->k) / a->s + 1;
  a->wo = (a->w + 2 * a->p - a->k) / a->s + 1;
}

/* conv2d_fwd(x (N, C, H, W), w (O, C, k, k), b (O) | nil, stride, padding) -> y */
static int l_conv2d_fwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 4), *w = dense(L, 2, "weight", 4), *b = opt_dense(L, 3, "bias", 1);
  conv_args a;
  conv_check(L, x, w, 4, &a);
  need_numel(L, 3, "bias", b, a.o);
  int64_t s[4] = {a.n, a.o, a.ho, a.wo};
  df_tensor *y = df_newtensor(L, 4, s);
  check_status(L, "conv2d", df_nn_conv2d_fwd(x->data, a.n, a.c, a.h, a.w, w->data, a.o, a.k, a.s, a.p,
                                             b ? b->data : NULL, y->data));
  return 1;
}

/* conv2d_bwd(x, w, dy, stride, padding, want_dx, dw | nil, db | nil) -> dx | nil */
static int l_conv2d_bwd(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 4), *w = dense(L, 2, "weight", 4), *dy = dense(L, 3, "dy", 4);
  conv_args a;
  conv_check(L, x, w, 4, &a);
  if (dy->shape[0] != a.n || dy->shape[1] != a.o || dy->shape[2] != a.ho || dy->shape[3] != a.wo)
    return df_shape_mismatch(L, 3, "dy", dy, "x", x);
  int want = lua_toboolean(L, 6);
  df_tensor *dw = opt_dense(L, 7, "dw", 4), *db = opt_dense(L, 8, "db", 1);
  need_numel(L, 7, "dw", dw, df_numel(w));
  need_numel(L, 8, "db", db, a.o);
  lua_settop(L, 8);
  df_tensor *dx = want ? df_newlike(L, x) : NULL;
  if (!want) lua_pushnil(L);
  check_status(L, "conv2d backward", df_nn_conv2d_bwd(x->data, dy->data, a.n, a.c, a.h, a.w, w->data, a.o, a.k, a.s,
                                                      a.p, dx ? dx->data : NULL, dw ? dw->data : NULL,
                                                      db ? db->data : NULL));
  return 1;
}

/* mse(pred, target, want_grad) -> loss, grad | nil */
static int l_mse(lua_State *L) {
  df_tensor *p = dense(L, 1, "pred", 0), *t = dense(L, 2, "target", 0);
  if (!df_same_shape(p, t)) return df_shape_mismatch(L, 2, "target", t, "pred", p);
  int want = lua_toboolean(L, 3);
  lua_settop(L, 3);
  lua_pushnil(L); /* loss slot */
  df_tensor *g = want ? df_newlike(L, p) : NULL;
  if (!want) lua_pushnil(L);
  lua_pushnumber(L, df_nn_mse(p->data, t->data, df_numel(p), g ? g->data : NULL));
  lua_replace(L, 4);
  return 2;
}

/* cross_entropy(logits (N, C), labels (N), want_grad) -> mean loss, grad | nil */
static int l_cross_entropy(lua_State *L) {
  df_tensor *z = dense(L, 1, "logits", 2);
  int64_t n;
  int64_t *idx = labels_of(L, 2, z->shape[1], &n); /* index 4 after settop below? no: pushed at top */
  if (n != z->shape[0])
    return luaL_argerror(L, 2, lua_pushfstring(L, "labels has %d entries but logits has %d rows", (int)n,
                                               (int)z->shape[0]));
  int want = lua_toboolean(L, 3);
  lua_pushnil(L);
  int slot = lua_gettop(L);
  df_tensor *g = want ? df_newlike(L, z) : NULL;
  if (!want) lua_pushnil(L);
  lua_pushnumber(L, df_nn_cross_entropy(z->data, idx, n, z->shape[1], g ? g->data : NULL));
  lua_replace(L, slot);
  return 2;
}

/* adamw(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2) updates p, m, v in place. */
static int l_adamw(lua_State *L) {
  df_tensor *p = dense(L, 1, "param", 0), *g = dense(L, 2, "grad", 0), *m = dense(L, 3, "m", 0),
            *v = dense(L, 4, "v", 0);
  int64_t n = df_numel(p);
  need_numel(L, 2, "grad", g, n);
  need_numel(L, 3, "m", m, n);
  need_numel(L, 4, "v", v, n);
  double h[7];
  for (int i = 0; i < 7; i++) h[i] = luaL_checknumber(L, 5 + i);
  df_nn_adamw(p->data, g->data, m->data, v->data, n, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
  return 0;
}

static int l_sumsq(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 0);
  lua_pushnumber(L, df_nn_sumsq(x->data, df_numel(x)));
  return 1;
}

static int l_scale_(lua_State *L) {
  df_tensor *x = dense(L, 1, "x", 0);
  df_nn_scale(x->data, df_numel(x), (float)luaL_checknumber(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int l_ema_(lua_State *L) {
  df_tensor *e = dense(L, 1, "shadow", 0), *p = dense(L, 2, "param", 0);
  need_numel(L, 2, "param", p, df_numel(e));
  double d = luaL_checknumber(L, 3);
  luaL_argcheck(L, d >= 0 && d <= 1, 3, "decay must be in [0, 1]");
  df_nn_ema(e->data, p->data, df_numel(e), d);
  return 0;
}

static int l_acc_(lua_State *L) {
  df_tensor *y = dense(L, 1, "y", 0), *x = dense(L, 2, "x", 0);
  need_numel(L, 2, "x", x, df_numel(y));
  df_nn_acc(y->data, x->data, df_numel(y));
  lua_settop(L, 1);
  return 1;
}

void df_open_nn(lua_State *L, int methods, int module) {
  (void)methods;
  static const luaL_Reg fns[] = {
      {"linear_fwd", l_linear_fwd},       {"linear_bwd", l_linear_bwd},
      {"film_silu_fwd", l_film_silu_fwd}, {"film_silu_bwd", l_film_silu_bwd},
      {"gelu_fwd", l_gelu_fwd},           {"gelu_bwd", l_gelu_bwd},
      {"layernorm_fwd", l_layernorm_fwd}, {"layernorm_bwd", l_layernorm_bwd},
      {"groupnorm_fwd", l_groupnorm_fwd}, {"groupnorm_bwd", l_groupnorm_bwd},
      {"sinusoidal", l_sinusoidal},       {"embedding_fwd", l_embedding_fwd},
      {"embedding_bwd", l_embedding_bwd}, {"dropout", l_dropout},
      {"drop_labels", l_drop_labels},     {"avgpool_fwd", l_avgpool_fwd},
      {"avgpool_bwd", l_avgpool_bwd},     {"add_channel_", l_add_channel_},
      {"channel_sum", l_channel_sum},     {"conv2d_fwd", l_conv2d_fwd},
      {"conv2d_bwd", l_conv2d_bwd},       {"mse", l_mse},
      {"cross_entropy", l_cross_entropy}, {"adamw", l_adamw},
      {"sumsq", l_sumsq},                 {"scale_", l_scale_},
      {"ema_", l_ema_},                   {"acc_", l_acc_},
      {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  lua_setfield(L, module, "_nn");
}
