/* datadir_lock.h - one server per data directory (advisory fcntl lock). */
#ifndef RK_DATADIR_LOCK_H
#define RK_DATADIR_LOCK_H

#include <stddef.h>

#define RK_DATADIR_LOCK_NAME "rwkvd.lock"

/* Create `dir` if needed and take the write lock on dir/rwkvd.lock, writing
 * this process's pid into it. On success *fd_out is the descriptor, which
 * must stay open for as long as the lock is wanted (closing it, or the
 * process ending in any way, releases it). On failure returns -1 with a
 * message in `err` that names the holder's pid when another process holds
 * the lock. Not thread-safe against another call in the same process. */
int rk_datadir_lock(const char *dir, int *fd_out, char *err, size_t cap);

/* The pid of the process holding dir/rwkvd.lock, or 0 when none does (or
 * there is no lock file). Must not be called by the holder itself. */
long rk_datadir_lock_holder(const char *dir);

#endif
