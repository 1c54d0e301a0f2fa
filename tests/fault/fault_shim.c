/*
 * fault_shim.c - an LD_PRELOAD library for the fault tests: makes write(),
 * fsync() and rename() fail on chosen files of a running server.
 *
 * The environment variable RK_FAULT_CTL names a control file, re-read on
 * every intercepted call, so a test switches faults on and off while the
 * server runs. Each line is "OP SUBSTRING": the call fails when the file it
 * acts on (for write and fsync the descriptor's path from /proc/self/fd,
 * for rename the target) contains SUBSTRING:
 *
 *   write  SUB   write() fails with ENOSPC (disk full)
 *   fsync  SUB   fsync() fails with EIO
 *   rename SUB   rename() fails with EIO
 *   slow   SUB   fsync() first sleeps RK_FAULT_SLOW_MS milliseconds (default
 *                2000), then syncs: a slow disk. While it sleeps, the file
 *                RK_FAULT_SLOW_MARK (if set) exists, so a test can tell
 *                that a request is waiting on the disk right now.
 *
 * A SUBSTRING that ends in '$' must match at the end of the path.
 *
 * An empty or missing control file injects nothing. Test-only code: built
 * by tests/meson.build, never linked into rwkvd.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The rule for `op` from the control file, if any; copies its substring. */
/* The project builds with -fvisibility=hidden; these must be exported. */
#define SHIM_API __attribute__((visibility("default")))

static int rule_for(const char *op, char *sub, size_t cap)
{
    const char *ctl = getenv("RK_FAULT_CTL");
    if (!ctl)
        return 0;
    int fd = open(ctl, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[1024];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    size_t ol = strlen(op);
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (!strncmp(line, op, ol) && line[ol] == ' ' && line[ol + 1]) {
            snprintf(sub, cap, "%s", line + ol + 1);
            return 1;
        }
    return 0;
}

/* strstr, where a trailing '$' in sub anchors it at the end of s. */
static int path_matches(const char *s, const char *sub)
{
    size_t n = strlen(sub), ls = strlen(s);
    if (n && sub[n - 1] == '$')
        return n - 1 <= ls && !strncmp(s + ls - (n - 1), sub, n - 1);
    return strstr(s, sub) != NULL;
}

static int fd_matches(int fd, const char *op)
{
    char sub[512], link[64], path[4096];
    if (fd <= 2 || !rule_for(op, sub, sizeof sub)) // never the standard streams
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = 0;
    return path_matches(path, sub);
}

SHIM_API ssize_t write(int fd, const void *buf, size_t len)
{
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (fd_matches(fd, "write")) {
        errno = ENOSPC;
        return -1;
    }
    return real(fd, buf, len);
}

SHIM_API int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (fd_matches(fd, "fsync")) {
        errno = EIO;
        return -1;
    }
    if (fd_matches(fd, "slow")) {
        const char *ms = getenv("RK_FAULT_SLOW_MS");
        long t = ms ? strtol(ms, NULL, 10) : 2000;
        struct timespec ts = {t / 1000, (t % 1000) * 1000000L};
        const char *mark = getenv("RK_FAULT_SLOW_MARK");
        int mfd = mark ? open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600) : -1;
        if (mfd >= 0)
            close(mfd);
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        if (mark)
            unlink(mark);
    }
    return real(fd);
}

SHIM_API int rename(const char *from, const char *to)
{
    static int (*real)(const char *, const char *);
    if (!real)
        real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    char sub[512];
    if (rule_for("rename", sub, sizeof sub) && path_matches(to, sub)) {
        errno = EIO;
        return -1;
    }
    return real(from, to);
}
