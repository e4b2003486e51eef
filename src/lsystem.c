/* Process-level helpers for long runs, and whole-file writes that are never half-done.
 *
 * A clean stop on Ctrl-C (training, search): while armed, SIGINT only raises a
 * flag that the Lua loop polls between steps; disarming restores the previous handler, so a
 * second Ctrl-C outside a run still stops the process as usual. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "atomicfile.h"
#include "ltensor.h"

static volatile sig_atomic_t interrupted = 0;
static struct sigaction previous;
static int armed = 0;

static void on_sigint(int sig) {
  (void)sig;
  if (interrupted) {
    /* A second Ctrl-C while armed: the user insists, stop now. */
    sigaction(SIGINT, &previous, NULL);
    raise(SIGINT);
    return;
  }
  interrupted = 1;
}

/* arm() -> true; installs the flag-raising handler (idempotent). */
static int s_arm(lua_State *L) {
  if (!armed) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, &previous) != 0) return luaL_error(L, "cannot install the SIGINT handler");
    armed = 1;
  }
  interrupted = 0;
  lua_pushboolean(L, 1);
  return 1;
}

static int s_disarm(lua_State *L) {
  if (armed) {
    sigaction(SIGINT, &previous, NULL);
    armed = 0;
  }
  interrupted = 0;
  lua_pushboolean(L, 1);
  return 1;
}

/* interrupted() -> whether Ctrl-C arrived since arm(). */
static int s_interrupted(lua_State *L) {
  lua_pushboolean(L, interrupted != 0);
  return 1;
}

/* raise() -> simulates a Ctrl-C (for tests). */
static int s_raise(lua_State *L) {
  lua_pushboolean(L, raise(SIGINT) == 0);
  return 1;
}

/* isatty(fd) for 0, 1, 2: progress lines redraw in place only on a terminal. */
static int s_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "0, 1 or 2 expected");
  lua_pushboolean(L, isatty((int)fd) == 1);
  return 1;
}

/* write_file(path, text) -> true | nil, message: the text goes to a temporary file in the
 * same directory, synced and renamed over path only when all of it was written, so a crash
 * or a full disk leaves the old file (or none), never a truncated one.  Plans, fitted
 * coefficients and result tables are written through this. */
static int s_write_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t n;
  const char *text = luaL_checklstring(L, 2, &n);
  char err[512];
  df_atomic_file f;
  if (df_atomic_open(&f, path, err, sizeof err)) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  if (n > 0 && fwrite(text, 1, n, f.fp) != n) {
    snprintf(err, sizeof err, "%s: write failed", path);
    df_atomic_abort(&f);
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  if (df_atomic_commit(&f, err, sizeof err)) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

void df_open_system(lua_State *L, int methods, int module) {
  static const luaL_Reg fns[] = {
    {"arm_sigint", s_arm}, {"disarm_sigint", s_disarm}, {"interrupted", s_interrupted},
    {"raise_sigint", s_raise}, {"isatty", s_isatty}, {"write_file", s_write_file},
    {NULL, NULL}};
  (void)methods;
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  lua_setfield(L, module, "_system");
}
