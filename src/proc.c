/* Forked workers and MPI ranks for parallel evaluation (see proc.h).  Pure C, no lua.h. */
#define _GNU_SOURCE /* MSG_NOSIGNAL, SOCK_CLOEXEC, prctl */
#include "proc.h"

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "blas.h"

pid_t df_proc_fork(void) {
  fflush(NULL);
  pid_t pid = fork();
  return pid < 0 ? -errno : pid;
}

void df_proc_child_setup(int threads) {
#ifdef __linux__
  /* A worker outliving its parent (killed, crashed) would compute for nobody. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) _exit(1); /* the parent died before prctl took effect */
#endif
  /* The terminal sends Ctrl-C to the whole process group; the parent decides what stops. */
  signal(SIGINT, SIG_IGN);
  signal(SIGPIPE, SIG_DFL);
  df_blas_set_threads(threads < 1 ? 1 : threads);
}

int df_proc_cpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : (int)n;
}

int df_proc_socketpair(int fds[2]) {
  return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0 ? 0 : -errno;
}

int df_proc_close(int fd) { return close(fd) == 0 ? 0 : -errno; }

static int send_all(int fd, const unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int df_proc_send(int fd, const void *buf, size_t len) {
  unsigned char hdr[8];
  uint64_t v = (uint64_t)len;
  for (int i = 0; i < 8; i++) hdr[i] = (unsigned char)(v >> (8 * i));
  int rc = send_all(fd, hdr, sizeof hdr);
  if (rc == 0 && len > 0) rc = send_all(fd, (const unsigned char *)buf, len);
  return rc;
}

int df_proc_recv_exact(int fd, void *buf, size_t n) {
  unsigned char *p = (unsigned char *)buf;
  size_t got = 0;
  while (got < n) {
    ssize_t r = recv(fd, p + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) return got == 0 ? 1 : -EPIPE;
    got += (size_t)r;
  }
  return 0;
}

int df_proc_poll(const int *fds, int n, int timeout_ms, int *ready) {
  struct pollfd pf[256];
  if (n < 0 || n > 256) return -EINVAL;
  for (int i = 0; i < n; i++) {
    pf[i].fd = fds[i];
    pf[i].events = POLLIN;
    pf[i].revents = 0;
    ready[i] = 0;
  }
  int rc = poll(pf, (nfds_t)n, timeout_ms);
  if (rc < 0) return -errno;
  for (int i = 0; i < n; i++) ready[i] = (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
  return rc;
}

int df_proc_wait(pid_t pid, int nohang, int *kind, int *code) {
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid, &status, nohang ? WNOHANG : 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  *kind = 0;
  *code = 0;
  if (r == 0) return 0;
  if (WIFEXITED(status)) {
    *kind = 1;
    *code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    *kind = 2;
    *code = WTERMSIG(status);
  }
  return 0;
}

int df_proc_kill(pid_t pid, int sig) { return kill(pid, sig) == 0 ? 0 : -errno; }

void df_proc_exit(int code) {
  fflush(NULL);
  _exit(code);
}

static volatile sig_atomic_t sigint_flag = 0;
static struct sigaction sigint_previous;
static int sigint_captured = 0;

static void on_sigint(int sig) {
  (void)sig;
  sigint_flag = 1;
}

int df_proc_sigint_capture(void) {
  if (sigint_captured) return 0;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint; /* no SA_RESTART: poll() returns EINTR at once */
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, &sigint_previous) != 0) return -errno;
  sigint_flag = 0;
  sigint_captured = 1;
  return 0;
}

int df_proc_sigint_caught(void) { return sigint_flag != 0; }

int df_proc_sigint_release(void) {
  int caught = sigint_flag != 0;
  if (sigint_captured) {
    sigaction(SIGINT, &sigint_previous, NULL);
    sigint_captured = 0;
  }
  sigint_flag = 0;
  return caught;
}

void df_proc_sigint_forward(void) { raise(SIGINT); }

/* ---- MPI ----
 * Open MPI's handles are addresses of exported objects (MPI_COMM_WORLD is &ompi_mpi_comm_world)
 * and MPI_STATUS_IGNORE is a null pointer, so no mpi.h is needed: the module builds and loads
 * on machines without MPI, and asks for it only when a pool wants it. */
typedef void *mpi_handle;
static struct {
  int loaded, initialised, rank, size;
  void *lib;
  mpi_handle comm_world, byte;
  int (*Init)(int *, char ***);
  int (*Initialized)(int *);
  int (*Finalized)(int *);
  int (*Finalize)(void);
  int (*Comm_rank)(mpi_handle, int *);
  int (*Comm_size)(mpi_handle, int *);
  int (*Send)(const void *, int, mpi_handle, int, int, mpi_handle);
  int (*Recv)(void *, int, mpi_handle, int, int, mpi_handle, void *);
  int (*Iprobe)(int, int, mpi_handle, int *, void *);
  char library[256];
} M;

enum { TAG_HEADER = 11, TAG_PAYLOAD = 12, MPI_ANY = -1 };

const char *df_mpi_library(void) { return M.library; }

static int mpi_load(char *err, size_t errlen) {
  static const char *const names[] = {"libmpi.so.40", "libmpi.so", NULL};
  if (M.loaded) return 0;
  for (int i = 0; names[i] && !M.lib; i++) {
    /* RTLD_GLOBAL: Open MPI's own plugins resolve libmpi's symbols from the global scope. */
    M.lib = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
    if (M.lib) snprintf(M.library, sizeof M.library, "%s", names[i]);
  }
  if (!M.lib) {
    const char *why = dlerror();
    snprintf(err, errlen, "cannot load Open MPI's libmpi.so.40 (%s); on Debian: apt-get install "
             "openmpi-bin libopenmpi-dev", why ? why : "not found");
    return -1;
  }
#define SYM(field, name)                                                        \
  do {                                                                          \
    *(void **)(&M.field) = dlsym(M.lib, name);                                  \
    if (!M.field) {                                                             \
      snprintf(err, errlen, "%s has no %s (Open MPI expected)", M.library, name); \
      return -1;                                                                \
    }                                                                           \
  } while (0)
  SYM(Init, "MPI_Init");
  SYM(Initialized, "MPI_Initialized");
  SYM(Finalized, "MPI_Finalized");
  SYM(Finalize, "MPI_Finalize");
  SYM(Comm_rank, "MPI_Comm_rank");
  SYM(Comm_size, "MPI_Comm_size");
  SYM(Send, "MPI_Send");
  SYM(Recv, "MPI_Recv");
  SYM(Iprobe, "MPI_Iprobe");
  SYM(comm_world, "ompi_mpi_comm_world");
  SYM(byte, "ompi_mpi_byte");
#undef SYM
  M.loaded = 1;
  return 0;
}

int df_mpi_init(char *err, size_t errlen) {
  if (M.initialised) return 0;
  if (mpi_load(err, errlen) != 0) return -1;
  int done = 0;
  M.Finalized(&done);
  if (done) {
    snprintf(err, errlen, "MPI was already finalised in this process");
    return -1;
  }
  M.Initialized(&done);
  if (!done && M.Init(NULL, NULL) != 0) {
    snprintf(err, errlen, "MPI_Init failed");
    return -1;
  }
  if (M.Comm_rank(M.comm_world, &M.rank) != 0 || M.Comm_size(M.comm_world, &M.size) != 0) {
    snprintf(err, errlen, "MPI_Comm_rank/MPI_Comm_size failed");
    return -1;
  }
  M.initialised = 1;
  return 0;
}

int df_mpi_rank(void) { return M.rank; }
int df_mpi_size(void) { return M.size; }

int df_mpi_send(int dest, int64_t kind, int64_t index, const void *payload, size_t len) {
  if (!M.initialised || len > (size_t)0x7fffffff) return -1;
  int64_t hdr[4] = {kind, index, (int64_t)len, M.rank};
  if (M.Send(hdr, (int)sizeof hdr, M.byte, dest, TAG_HEADER, M.comm_world) != 0) return -1;
  if (len > 0 && M.Send(payload, (int)len, M.byte, dest, TAG_PAYLOAD, M.comm_world) != 0) return -1;
  return 0;
}

int df_mpi_recv_header(int source, int64_t hdr[4]) {
  if (!M.initialised) return -1;
  /* Open MPI's blocking receive spins a core; a waiting rank probes and sleeps instead, so an
   * idle worker (or the root between rounds) leaves the CPU to the ranks that compute. */
  struct timespec nap = {0, 200000}; /* 0.2 ms: small next to an evaluation */
  for (;;) {
    int flag = 0;
    if (M.Iprobe(source < 0 ? MPI_ANY : source, TAG_HEADER, M.comm_world, &flag, NULL) != 0) return -1;
    if (flag) break;
    nanosleep(&nap, NULL);
  }
  return M.Recv(hdr, 4 * (int)sizeof(int64_t), M.byte, source < 0 ? MPI_ANY : source, TAG_HEADER,
                M.comm_world, NULL) == 0 ? 0 : -1;
}

int df_mpi_recv_payload(int source, void *buf, size_t len) {
  if (!M.initialised || len > (size_t)0x7fffffff) return -1;
  return M.Recv(buf, (int)len, M.byte, source, TAG_PAYLOAD, M.comm_world, NULL) == 0 ? 0 : -1;
}

int df_mpi_finalize(void) {
  if (!M.initialised) return 0;
  int done = 0;
  M.Finalized(&done);
  if (!done && M.Finalize() != 0) return -1;
  M.initialised = 0;
  return 0;
}

int df_mpi_finalized(void) {
  if (!M.loaded) return 0;
  int done = 0;
  M.Finalized(&done);
  return done;
}
