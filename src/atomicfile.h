/* Writing a file so that a failure never leaves it half-written: data goes to a temporary
 * file in the same directory, which is flushed, synced and renamed over the target only
 * when everything succeeded.  Pure C; errors come back as messages in err. */
#ifndef DIFFUSE_ATOMICFILE_H
#define DIFFUSE_ATOMICFILE_H

#include <stdio.h>

typedef struct df_atomic_file {
  FILE *fp;
  char *tmp_path;  /* malloc'd "<path>.tmp-XXXXXX" */
  char *path;      /* malloc'd copy of the target */
} df_atomic_file;

/* Returns 0 and an open file, or -1 with a message in err (the target is untouched). */
int df_atomic_open(df_atomic_file *f, const char *path, char *err, size_t errn);
/* Flush, sync, close and rename into place.  On failure the temporary file is removed, the
 * target is untouched, and -1 is returned with a message.  Always releases f. */
int df_atomic_commit(df_atomic_file *f, char *err, size_t errn);
/* Close and remove the temporary file; the target is untouched.  Safe to call twice. */
void df_atomic_abort(df_atomic_file *f);

#endif
