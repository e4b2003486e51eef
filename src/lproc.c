/* Bindings for proc.c: the primitives lua/diffuse/search/parallel.lua builds its worker pools
 * on, in the internal table diffuse.core._proc.  Plain functions over fds and pids; the
 * protocol (who sends what, when) lives in Lua. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ltensor.h"
#include "proc.h"

/* Messages larger than this are refused: a corrupt length must not allocate gigabytes. */
#define MAX_MESSAGE ((uint64_t)1 << 30)

static int fail_errno(lua_State *L, const char *what, int neg) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", what, strerror(-neg));
  return 2;
}

static int checkfd(lua_State *L, int arg) {
  lua_Integer fd = luaL_checkinteger(L, arg);
  luaL_argcheck(L, fd >= 0 && fd <= 1 << 20, arg, "file descriptor expected");
  return (int)fd;
}

/* fork() -> pid in the parent, 0 in the child; raises when the system refuses. */
static int p_fork(lua_State *L) {
  pid_t pid = df_proc_fork();
  if (pid < 0) return luaL_error(L, "fork failed: %s", strerror((int)-pid));
  lua_pushinteger(L, (lua_Integer)pid);
  return 1;
}

/* child_setup(threads) in a new worker. */
static int p_child_setup(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "thread count must be between 1 and 4096");
  df_proc_child_setup((int)n);
  return 0;
}

static int p_cpus(lua_State *L) {
  lua_pushinteger(L, df_proc_cpus());
  return 1;
}

static int p_socketpair(lua_State *L) {
  int fds[2];
  int rc = df_proc_socketpair(fds);
  if (rc != 0) return luaL_error(L, "socketpair failed: %s", strerror(-rc));
  lua_pushinteger(L, fds[0]);
  lua_pushinteger(L, fds[1]);
  return 2;
}

static int p_close(lua_State *L) {
  int rc = df_proc_close(checkfd(L, 1));
  if (rc != 0) return fail_errno(L, "close", rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* send(fd, s) -> true | nil, message */
static int p_send(lua_State *L) {
  int fd = checkfd(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int rc = df_proc_send(fd, s, len);
  if (rc != 0) return fail_errno(L, "send", rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* recv(fd) -> s | nil, "eof" | nil, message */
static int p_recv(lua_State *L) {
  int fd = checkfd(L, 1);
  unsigned char hdr[8];
  int rc = df_proc_recv_exact(fd, hdr, sizeof hdr);
  if (rc == 1) {
    lua_pushnil(L);
    lua_pushliteral(L, "eof");
    return 2;
  }
  if (rc != 0) return fail_errno(L, "recv", rc);
  uint64_t len = 0;
  for (int i = 0; i < 8; i++) len |= (uint64_t)hdr[i] << (8 * i);
  if (len > MAX_MESSAGE) {
    lua_pushnil(L);
    lua_pushliteral(L, "recv: message length out of range (corrupt stream)");
    return 2;
  }
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, (size_t)len);
  rc = len ? df_proc_recv_exact(fd, p, (size_t)len) : 0;
  if (rc != 0) return fail_errno(L, "recv", rc == 1 ? -EPIPE : rc);
  luaL_pushresultsize(&b, (size_t)len);
  return 1;
}

/* poll({fd, ...}, timeout_ms) -> {i, ...} (indices of readable fds) | nil, "interrupted" */
static int p_poll(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer timeout = luaL_checkinteger(L, 2);
  luaL_argcheck(L, timeout >= -1 && timeout <= 3600000, 2, "timeout in ms between -1 and 3600000");
  int n = (int)luaL_len(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 256, 1, "at most 256 descriptors");
  int fds[256], ready[256];
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    int isint;
    lua_Integer fd = lua_tointegerx(L, -1, &isint);
    luaL_argcheck(L, isint && fd >= 0, 1, "list of file descriptors expected");
    fds[i] = (int)fd;
    lua_pop(L, 1);
  }
  int rc = df_proc_poll(fds, n, (int)timeout, ready);
  if (rc == -EINTR) {
    lua_pushnil(L);
    lua_pushliteral(L, "interrupted");
    return 2;
  }
  if (rc < 0) return fail_errno(L, "poll", rc);
  lua_createtable(L, rc, 0);
  int k = 0;
  for (int i = 0; i < n; i++)
    if (ready[i]) {
      lua_pushinteger(L, i + 1);
      lua_rawseti(L, -2, ++k);
    }
  return 1;
}

/* wait(pid, nohang) -> "running" | "exited", code | "signaled", signo, name */
static int p_wait(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "process id expected");
  int nohang = lua_toboolean(L, 2);
  int kind, code;
  int rc = df_proc_wait((pid_t)pid, nohang, &kind, &code);
  if (rc != 0) return fail_errno(L, "waitpid", rc);
  if (kind == 0) {
    lua_pushliteral(L, "running");
    return 1;
  }
  lua_pushstring(L, kind == 1 ? "exited" : "signaled");
  lua_pushinteger(L, code);
  if (kind == 2) {
    lua_pushstring(L, strsignal(code));
    return 3;
  }
  return 2;
}

/* kill(pid, "KILL" | "TERM" | "INT") */
static int p_kill(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "process id expected");
  static const char *const names[] = {"KILL", "TERM", "INT", NULL};
  static const int sigs[] = {SIGKILL, SIGTERM, SIGINT};
  int s = luaL_checkoption(L, 2, "KILL", names);
  int rc = df_proc_kill((pid_t)pid, sigs[s]);
  if (rc != 0) return fail_errno(L, "kill", rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int p_exit(lua_State *L) {
  lua_Integer code = luaL_optinteger(L, 1, 0);
  luaL_argcheck(L, code >= 0 && code <= 255, 1, "exit code between 0 and 255");
  df_proc_exit((int)code);
  return 0;
}

static int p_sigint_capture(lua_State *L) {
  int rc = df_proc_sigint_capture();
  if (rc != 0) return luaL_error(L, "cannot install the SIGINT handler: %s", strerror(-rc));
  return 0;
}

static int p_sigint_caught(lua_State *L) {
  lua_pushboolean(L, df_proc_sigint_caught());
  return 1;
}

static int p_sigint_release(lua_State *L) {
  lua_pushboolean(L, df_proc_sigint_release());
  return 1;
}

static int p_sigint_forward(lua_State *L) {
  (void)L;
  df_proc_sigint_forward();
  return 0;
}

/* mpi_init() -> rank, size | nil, message */
static int p_mpi_init(lua_State *L) {
  char err[512];
  if (df_mpi_init(err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushinteger(L, df_mpi_rank());
  lua_pushinteger(L, df_mpi_size());
  return 2;
}

static int checkrank(lua_State *L, int arg, int any) {
  lua_Integer r = luaL_checkinteger(L, arg);
  luaL_argcheck(L, (any && r == -1) || (r >= 0 && r < df_mpi_size()), arg, "rank out of range");
  return (int)r;
}

/* mpi_send(dest, kind, index, payload) */
static int p_mpi_send(lua_State *L) {
  int dest = checkrank(L, 1, 0);
  lua_Integer kind = luaL_checkinteger(L, 2);
  lua_Integer index = luaL_checkinteger(L, 3);
  size_t len;
  const char *s = luaL_optlstring(L, 4, "", &len);
  if (df_mpi_send(dest, kind, index, s, len) != 0) return luaL_error(L, "MPI send to rank %d failed", dest);
  return 0;
}

/* mpi_recv(source | -1) -> kind, index, payload, from */
static int p_mpi_recv(lua_State *L) {
  int source = checkrank(L, 1, 1);
  int64_t hdr[4];
  if (df_mpi_recv_header(source, hdr) != 0) return luaL_error(L, "MPI receive failed");
  if (hdr[2] < 0 || (uint64_t)hdr[2] > MAX_MESSAGE || hdr[3] < 0 || hdr[3] >= df_mpi_size())
    return luaL_error(L, "MPI receive: corrupt header");
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, (size_t)hdr[2]);
  if (hdr[2] > 0 && df_mpi_recv_payload((int)hdr[3], p, (size_t)hdr[2]) != 0)
    return luaL_error(L, "MPI receive of %d bytes failed", (int)hdr[2]);
  luaL_pushresultsize(&b, (size_t)hdr[2]); /* the buffer must be on top until here */
  lua_pushinteger(L, hdr[0]);
  lua_insert(L, -2);
  lua_pushinteger(L, hdr[1]);
  lua_insert(L, -2);
  lua_pushinteger(L, hdr[3]);
  return 4;
}

static int p_mpi_finalize(lua_State *L) {
  if (df_mpi_finalize() != 0) return luaL_error(L, "MPI_Finalize failed");
  return 0;
}

static int p_mpi_finalized(lua_State *L) {
  lua_pushboolean(L, df_mpi_finalized());
  return 1;
}

static int p_mpi_library(lua_State *L) {
  lua_pushstring(L, df_mpi_library());
  return 1;
}

void df_open_proc(lua_State *L, int methods, int module) {
  static const luaL_Reg fns[] = {
    {"fork", p_fork}, {"cpus", p_cpus}, {"child_setup", p_child_setup}, {"socketpair", p_socketpair},
    {"close", p_close}, {"send", p_send}, {"recv", p_recv}, {"poll", p_poll}, {"wait", p_wait},
    {"kill", p_kill}, {"exit", p_exit}, {"sigint_capture", p_sigint_capture},
    {"sigint_caught", p_sigint_caught}, {"sigint_release", p_sigint_release},
    {"sigint_forward", p_sigint_forward}, {"mpi_init", p_mpi_init}, {"mpi_send", p_mpi_send},
    {"mpi_recv", p_mpi_recv}, {"mpi_finalize", p_mpi_finalize},
    {"mpi_finalized", p_mpi_finalized}, {"mpi_library", p_mpi_library}, {NULL, NULL}};
  (void)methods;
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  lua_setfield(L, module, "_proc");
}
