/*
 * datadir_lock.c - one server per data directory.
 *
 * `rwkvd serve` holds an advisory write lock (fcntl F_SETLK) on
 * DIR/rwkvd.lock for its whole life. The kernel drops the lock when the
 * process ends, however it ends (kill -9 included), so a stale lock file never
 * blocks a restart; its content (the holder's pid) is only for humans. A
 * second server, or `rwkvd tune --out` into the store, finds the lock held and
 * stops at once naming the holder's pid: two servers on one store re-queue
 * each other's jobs, train them twice and publish them twice.
 *
 * fcntl locks belong to the process and are released when the process closes
 * any descriptor of the file, so the descriptor stays open until exit and
 * nothing else opens the lock file in the holder.
 */
#include "datadir_lock.h"
#include "rk_fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int rk_datadir_lock(const char *dir, int *fd_out, char *err, size_t cap)
{
    char path[PATH_MAX];
    *fd_out = -1;
    if (snprintf(path, sizeof path, "%s/%s", dir, RK_DATADIR_LOCK_NAME) >= (int)sizeof path) {
        snprintf(err, cap, "data dir path too long: %s", dir);
        return -1;
    }
    if (rk_mkdirs(dir, NULL) != RK_OK) {
        snprintf(err, cap, "cannot create the data dir %s: %s", dir, strerror(errno));
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        snprintf(err, cap, "cannot open the lock file %s: %s", path, strerror(errno));
        return -1;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int e = errno;
        struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        if ((e == EAGAIN || e == EACCES) && fcntl(fd, F_GETLK, &q) == 0 && q.l_type != F_UNLCK)
            snprintf(err, cap, "the data dir %s is in use by another rwkvd (pid %ld holds %s); "
                     "one server per data dir: stop that one or give another --data-dir",
                     dir, (long)q.l_pid, path);
        else
            snprintf(err, cap, "cannot lock %s: %s", path, strerror(e));
        close(fd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        /* the content is informational; the lock is what counts */
    }
    *fd_out = fd;
    return 0;
}

long rk_datadir_lock_holder(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, RK_DATADIR_LOCK_NAME) >= (int)sizeof path)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0;
    /* F_GETLK with a read lock reports any write lock; a read-only descriptor
     * suffices for the query. Closing it drops no lock: this process holds
     * none on the file unless it is the server itself, which never calls this. */
    struct flock q = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    long pid = 0;
    if (fcntl(fd, F_GETLK, &q) == 0 && q.l_type != F_UNLCK)
        pid = (long)q.l_pid;
    close(fd);
    return pid;
}
