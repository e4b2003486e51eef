#include "atomicfile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static void release(df_atomic_file *f) {
  free(f->tmp_path);
  free(f->path);
  f->tmp_path = f->path = NULL;
  f->fp = NULL;
}

int df_atomic_open(df_atomic_file *f, const char *path, char *err, size_t errn) {
  memset(f, 0, sizeof *f);
  size_t n = strlen(path);
  f->path = dup_str(path);
  f->tmp_path = malloc(n + 16);
  if (!f->path || !f->tmp_path) {
    snprintf(err, errn, "%s: out of memory", path);
    release(f);
    return -1;
  }
  memcpy(f->tmp_path, path, n);
  memcpy(f->tmp_path + n, ".tmp-XXXXXX", 12);
  int fd = mkstemp(f->tmp_path);
  if (fd < 0) {
    snprintf(err, errn, "%s: %s", path, strerror(errno));
    release(f);
    return -1;
  }
  /* mkstemp makes the file 0600; give it the usual permissions for a new file. */
  mode_t mask = umask(0);
  umask(mask);
  (void)fchmod(fd, 0666 & ~mask);
  f->fp = fdopen(fd, "wb");
  if (!f->fp) {
    snprintf(err, errn, "%s: %s", path, strerror(errno));
    close(fd);
    unlink(f->tmp_path);
    release(f);
    return -1;
  }
  return 0;
}

int df_atomic_commit(df_atomic_file *f, char *err, size_t errn) {
  if (!f->fp) {
    snprintf(err, errn, "file already closed");
    return -1;
  }
  int failed = 0, e = 0;
  if (fflush(f->fp) != 0 || ferror(f->fp)) { failed = 1; e = errno; }
  if (!failed && fsync(fileno(f->fp)) != 0 && errno != EINVAL) { failed = 1; e = errno; }
  if (fclose(f->fp) != 0 && !failed) { failed = 1; e = errno; }
  f->fp = NULL;
  if (!failed && rename(f->tmp_path, f->path) != 0) { failed = 1; e = errno; }
  if (failed) {
    snprintf(err, errn, "%s: %s", f->path, strerror(e ? e : EIO));
    unlink(f->tmp_path);
    release(f);
    return -1;
  }
  release(f);
  return 0;
}

void df_atomic_abort(df_atomic_file *f) {
  if (f->fp) fclose(f->fp);
  if (f->tmp_path) unlink(f->tmp_path);
  release(f);
}
