/*
 * fileio.c - the one implementation of the file and byte helpers that the
 * model writer, the state files and store, the jobs journal and the server
 * share (rk_fileio.h): atomic durable writes through a temp file in the
 * target's directory, capped reads that refuse symlinks, mkdir -p, directory
 * fsync, the start-up removal of interrupted writes' temp files, 16-bit
 * float elements to fp32, and the growable string buffer.
 *
 * The temp name "<path>.tmp.<pid>.<n>" is part of the on-disk contract:
 * rk_file_clean_temps removes exactly that pattern at start-up
 * (docs/RELIABILITY.md).
 */
#include "core_int.h"
#include "rk_fileio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --- writes ------------------------------------------------------------------ */

static atomic_ulong tmp_seq;

/* The directory part of `path` into a new string ("." for a bare name). */
static char *dir_of(const char *path)
{
    size_t n = strlen(path);
    char *d = rk__malloc(n + 2);
    if (!d)
        return NULL;
    memcpy(d, path, n + 1);
    char *slash = strrchr(d, '/');
    if (!slash)
        strcpy(d, ".");
    else if (slash == d)
        d[1] = '\0';
    else
        *slash = '\0';
    return d;
}

static void tmp_release(struct rk_file_tmp *t)
{
    rk__free(t->tmp);
    rk__free(t->path);
    t->tmp = t->path = NULL;
    t->fd = -1;
}

int rk_file_tmp_open(struct rk_file_tmp *t, const char *path, struct rk_errbuf *eb)
{
    size_t n = strlen(path);
    t->fd = -1;
    t->path = rk__malloc(n + 1);
    t->tmp = rk__malloc(n + 48);
    if (!t->path || !t->tmp) {
        tmp_release(t);
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", path);
    }
    memcpy(t->path, path, n + 1);
    for (int tries = 0; t->fd < 0; tries++) {
        unsigned long my = atomic_fetch_add(&tmp_seq, 1) + 1;
        snprintf(t->tmp, n + 48, "%s.tmp.%ld.%lu", path, (long)getpid(), my);
        t->fd = open(t->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (t->fd < 0 && (errno != EEXIST || tries > 100)) {
            int rc = rk_errbuf_set(eb, RK_EIO, "create %s: %s", t->tmp, strerror(errno));
            tmp_release(t);
            return rc;
        }
    }
    return RK_OK;
}

int rk_file_tmp_write(struct rk_file_tmp *t, const void *buf, size_t n, struct rk_errbuf *eb)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(t->fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return rk_errbuf_set(eb, RK_EIO, "write %s: %s", t->tmp,
                                 w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return RK_OK;
}

void rk_file_tmp_abort(struct rk_file_tmp *t)
{
    if (!t->tmp)
        return;
    if (t->fd >= 0)
        close(t->fd);
    unlink(t->tmp);
    tmp_release(t);
}

int rk_file_tmp_commit(struct rk_file_tmp *t, struct rk_errbuf *eb)
{
    int rc;
    if (fsync(t->fd) != 0) {
        rc = rk_errbuf_set(eb, RK_EIO, "fsync %s: %s", t->tmp, strerror(errno));
        rk_file_tmp_abort(t);
        return rc;
    }
    int cr = close(t->fd);
    t->fd = -1;
    if (cr != 0) {
        rc = rk_errbuf_set(eb, RK_EIO, "close %s: %s", t->tmp, strerror(errno));
        rk_file_tmp_abort(t);
        return rc;
    }
    if (rename(t->tmp, t->path) != 0) {
        rc = rk_errbuf_set(eb, RK_EIO, "rename to %s: %s", t->path, strerror(errno));
        rk_file_tmp_abort(t);
        return rc;
    }
    // Renamed: the directory entry must reach the disk too.
    char *dir = dir_of(t->path);
    rc = !dir ? rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", t->path)
         : rk_dir_fsync(dir) != RK_OK
             ? rk_errbuf_set(eb, RK_EIO, "fsync directory of %s: %s", t->path, strerror(errno))
             : RK_OK;
    rk__free(dir);
    tmp_release(t);
    return rc;
}

int rk_file_write_atomic(const char *path, const void *buf, size_t len, struct rk_errbuf *eb)
{
    struct rk_file_tmp t;
    int rc = rk_file_tmp_open(&t, path, eb);
    if (rc != RK_OK)
        return rc;
    if ((rc = rk_file_tmp_write(&t, buf, len, eb)) != RK_OK) {
        rk_file_tmp_abort(&t);
        return rc;
    }
    return rk_file_tmp_commit(&t, eb);
}

const char *rk_file_error_reason(const char *msg)
{
    const char *why = msg;
    for (const char *p = strstr(msg, ": "); p; p = strstr(p + 2, ": "))
        why = p + 2;
    return why;
}

/* "<name>.tmp.<digits>.<digits>", the names rk_file_tmp_open gives its temp
 * files, with a non-empty <name>. */
static bool is_temp_name(const char *n)
{
    const char *t = NULL;
    for (const char *p = strstr(n, ".tmp."); p; p = strstr(p + 1, ".tmp."))
        t = p;
    if (!t || t == n)
        return false;
    const char *p = t + 5;
    size_t d1 = strspn(p, "0123456789");
    if (!d1 || d1 > 10 || p[d1] != '.')
        return false;
    p += d1 + 1;
    size_t d2 = strspn(p, "0123456789");
    return d2 && d2 <= 20 && !p[d2];
}

int rk_file_clean_temps_at(int dirfd, const char *what)
{
    int dup_fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0); // closedir closes its own descriptor
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0)
            close(dup_fd);
        return RK_EIO;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat st;
        if (!is_temp_name(e->d_name) ||
            fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        // unlinkat never follows a link: if the name was swapped for one
        // since the fstatat, the link itself goes, not its target.
        if (unlinkat(dirfd, e->d_name, 0) == 0)
            n++;
        else
            rk_log(RK_LOG_WARN, "cannot remove the stale temp file %s/%s: %s", what, e->d_name,
                   strerror(errno));
    }
    closedir(d);
    if (n) {
        fsync(dirfd);
        rk_log(RK_LOG_INFO, "removed %d stale temp file(s) of interrupted writes in %s", n, what);
    }
    return n;
}

int rk_file_clean_temps(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : RK_EIO;
    int n = rk_file_clean_temps_at(fd, dir);
    close(fd);
    return n;
}

/* --- reads ------------------------------------------------------------------- */

int rk_file_read_all(const char *path, size_t len_max, void **out, size_t *len,
                     struct rk_errbuf *eb)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return rk_errbuf_set(eb, RK_ENOTFOUND, "%s: not found", path);
        return rk_errbuf_set(eb, RK_EIO, "open %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return rk_errbuf_set(eb, RK_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > len_max) {
        close(fd);
        return rk_errbuf_set(eb, RK_ERANGE, "%s: %lld bytes exceeds the limit of %zu", path,
                             (long long)st.st_size, len_max);
    }
    size_t n = (size_t)st.st_size;
    char *b = rk__malloc(n ? n : 1);
    if (!b) {
        close(fd);
        return RK_ENOMEM;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        rk__free(b);
        return rk_errbuf_set(eb, RK_EIO, "%s: short read", path);
    }
    *out = b;
    *len = n;
    return RK_OK;
}

/* --- directories ---------------------------------------------------------------- */

int rk_dir_fsync(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return RK_EIO;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc == 0 ? RK_OK : RK_EIO;
}

int rk_mkdirs(const char *path, struct rk_errbuf *eb)
{
    size_t n = strlen(path);
    char *buf = rk__malloc(n + 1);
    if (!buf)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", path);
    memcpy(buf, path, n + 1);
    int rc = RK_OK;
    for (char *p = buf + (n ? 1 : 0);; p++) {
        if (*p != '/' && *p)
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, 0755) == 0) {
            // New: make its entry in the parent durable.
            char *slash = strrchr(buf, '/');
            if (slash && slash != buf) {
                *slash = '\0';
                int e = errno;
                rk_dir_fsync(buf);
                errno = e;
                *slash = '/';
            }
        } else if (errno != EEXIST) {
            int e = errno;
            rc = rk_errbuf_set(eb, RK_EIO, "mkdir %s: %s", buf, strerror(e));
            errno = e;
            break;
        }
        if (!c)
            break;
        *p = c;
    }
    int e = errno;
    rk__free(buf);
    errno = e;
    return rc;
}

/* --- 16-bit floats ------------------------------------------------------------- */

void rk_elems_to_f32(float *dst, const void *src, size_t n, enum rk_dtype dt)
{
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        if (dt == RK_DTYPE_F32) {
            uint32_t u = (uint32_t)s[4 * i] | (uint32_t)s[4 * i + 1] << 8 |
                         (uint32_t)s[4 * i + 2] << 16 | (uint32_t)s[4 * i + 3] << 24;
            memcpy(&dst[i], &u, 4);
        } else {
            uint16_t h = (uint16_t)(s[2 * i] | s[2 * i + 1] << 8);
            dst[i] = dt == RK_DTYPE_F16 ? rk__f16_to_f32(h) : rk__bf16_to_f32(h);
        }
    }
}

/* --- string buffer ----------------------------------------------------------------- */

bool rk_buf_reserve(struct rk_buf *b, size_t extra)
{
    // Not sticky: a buffer reused after a failure (the server's SSE
    // buffers) may grow again; `oom` tells a builder its text is incomplete.
    if (b->len + extra + 1 <= b->cap)
        return true;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra + 1)
        nc *= 2;
    char *p = rk__realloc(b->p, nc);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = nc;
    return true;
}

void rk_buf_put(struct rk_buf *b, const char *s, size_t n)
{
    if (!rk_buf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void rk_buf_puts(struct rk_buf *b, const char *s) { rk_buf_put(b, s, strlen(s)); }

void rk_buf_printf(struct rk_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        rk_buf_put(b, tmp, (size_t)n);
        return;
    }
    if (!rk_buf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void rk_buf_json_str(struct rk_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (!rk_buf_reserve(b, n * 6 + 2))
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c == '\r') {
            *o++ = '\\';
            *o++ = 'r';
        } else if (c == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    b->p[b->len] = 0;
}

void rk_buf_free(struct rk_buf *b)
{
    rk__free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}
