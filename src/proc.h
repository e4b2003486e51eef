/* Process-level support for parallel evaluation: forked workers talking over socket pairs,
 * and MPI ranks through an Open MPI loaded at run time.  Pure C: no lua.h; errors are
 * negative errno values or strings. */
#ifndef DIFFUSE_PROC_H
#define DIFFUSE_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* fork() after flushing every stdio stream (so buffered output is not written twice).
 * Returns the child's pid in the parent, 0 in the child, -errno on failure. */
pid_t df_proc_fork(void);

/* In a freshly forked child: die with the parent (Linux), leave Ctrl-C to the parent (which
 * stops its workers itself), and run the kernels with `threads` threads.  OpenMP's and
 * OpenBLAS's thread pools are not copied by fork; one thread per worker avoids them. */
void df_proc_child_setup(int threads);

/* Online processors (at least 1). */
int df_proc_cpus(void);

/* A connected pair of stream sockets (both ends close on exec).  0 or -errno. */
int df_proc_socketpair(int fds[2]);
int df_proc_close(int fd);

/* Length-prefixed messages (8-byte little-endian length, then the bytes).  send never raises
 * SIGPIPE (a dead peer is an error return).  0 or -errno. */
int df_proc_send(int fd, const void *buf, size_t len);
/* Exactly n bytes: 0, 1 on end of file before any byte, -EPIPE when the peer closed mid-way,
 * or -errno. */
int df_proc_recv_exact(int fd, void *buf, size_t n);

/* poll() for readability on fds[0..n-1]; ready[i] set to 1 for each readable (or hung-up) fd.
 * Returns the number ready, 0 on timeout, -EINTR when a signal arrived, or -errno. */
int df_proc_poll(const int *fds, int n, int timeout_ms, int *ready);

/* waitpid: kind 0 = still running (nohang), 1 = exited with *code, 2 = killed by signal *code.
 * 0 or -errno. */
int df_proc_wait(pid_t pid, int nohang, int *kind, int *code);
int df_proc_kill(pid_t pid, int sig);
/* Leave the process at once (no atexit handlers, no Lua state teardown) after flushing stdio. */
void df_proc_exit(int code);

/* While captured, Ctrl-C only sets a flag (the previous action is saved); release puts the
 * previous action back and returns whether Ctrl-C arrived.  Not nested. */
int df_proc_sigint_capture(void);
int df_proc_sigint_caught(void);
int df_proc_sigint_release(void);
/* Deliver SIGINT again to the previous action (after release). */
void df_proc_sigint_forward(void);

/* ---- MPI (Open MPI's libmpi.so.40, dlopen'ed) ---- */

/* Load libmpi and initialise MPI (once).  0 or -1 with a message in err. */
int df_mpi_init(char *err, size_t errlen);
int df_mpi_rank(void);
int df_mpi_size(void);
/* Send a header {kind, index, length, sender rank} and, when length > 0, the payload. */
int df_mpi_send(int dest, int64_t kind, int64_t index, const void *payload, size_t len);
/* Wait (politely: probe, then sleep) for a header from `source` (-1: any rank); fills hdr. */
int df_mpi_recv_header(int source, int64_t hdr[4]);
/* The payload announced by a header from `source`. */
int df_mpi_recv_payload(int source, void *buf, size_t len);
int df_mpi_finalize(void);
int df_mpi_finalized(void);
const char *df_mpi_library(void);

#endif
