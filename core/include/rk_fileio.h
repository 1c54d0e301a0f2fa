/*
 * rk_fileio.h - the file and byte helpers every layer of rwkvd shares
 * (core/fileio.c): durable atomic writes, capped reads, mkdir -p, directory
 * fsync, the clean-up of temp files that crashes leave behind, 16-bit float
 * elements to fp32, and a growable string buffer.
 *
 * For rwkvd's own layers (adapters, server, tests); not a stable API. The
 * functions are thread-safe (they share no state but an atomic counter).
 * Messages go into the optional `eb` and name the path; errno is converted
 * at the call that failed.
 */
#ifndef RK_FILEIO_H
#define RK_FILEIO_H

#include "rk_core.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --- writes ---------------------------------------------------------------- */

/* A file being written under a temp name next to its target:
 * "<path>.tmp.<pid>.<n>" (rk_file_clean_temps recognises that pattern and
 * nothing else), created O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode 0644. */
struct rk_file_tmp {
    int fd;
    char *path; /* the target (owned copy) */
    char *tmp;  /* the temp name (owned) */
};
/* Create the temp file for `path` (borrowed). On failure nothing is left. */
RK_API int rk_file_tmp_open(struct rk_file_tmp *t, const char *path, struct rk_errbuf *eb);
/* Append n bytes to t's file; RK_EIO names the temp file. */
RK_API int rk_file_tmp_write(struct rk_file_tmp *t, const void *buf, size_t n,
                             struct rk_errbuf *eb);
/* fsync, close, rename over the target, fsync the directory; then (or on
 * any failure, after removing the temp file) release `t`. */
RK_API int rk_file_tmp_commit(struct rk_file_tmp *t, struct rk_errbuf *eb);
/* Close and remove the temp file, release `t` (no-op on a released one). */
RK_API void rk_file_tmp_abort(struct rk_file_tmp *t);

/* Write `len` bytes to `path` atomically: temp file in the same directory,
 * write, fsync, rename, fsync of the directory. On any error the temp file
 * is removed and the old file (if any) is untouched. */
RK_API int rk_file_write_atomic(const char *path, const void *buf, size_t len,
                                struct rk_errbuf *eb);

/* Messages of the rk_file_* functions (and of the store's file errors
 * before it rewrites them) read "<operation> <path>: <reason>", the reason
 * being strerror's text or a short phrase. This returns the reason (a
 * pointer into msg after the last ": "), or msg when there is no ": ", so a
 * caller can show a client the reason without the server's paths. */
RK_API const char *rk_file_error_reason(const char *msg);

/* Remove the temp files that rk_file_write_atomic leaves behind when the
 * process dies between creating and renaming one: in the directory `dir`
 * (opened with O_NOFOLLOW; not its subdirectories), every regular file
 * named "<name>.tmp.<digits>.<digits>". Nothing else is touched: other
 * names, symbolic links (neither followed nor removed), directories. Call
 * it at start-up, before anything writes there: it cannot tell an
 * interrupted write from one in progress, so a directory must belong to one
 * process. Returns the number removed (0 when `dir` does not exist) or
 * RK_EIO; each removal is logged. The _at form takes an open directory
 * (borrowed) and a name for the log. */
RK_API int rk_file_clean_temps(const char *dir);
RK_API int rk_file_clean_temps_at(int dirfd, const char *what);

/* --- reads ------------------------------------------------------------------ */

/* Read a whole regular file (opened with O_NOFOLLOW) of at most `len_max`
 * bytes into a malloc'd buffer (the caller frees it). RK_ENOTFOUND when it does not exist,
 * RK_ERANGE when larger than len_max. */
RK_API int rk_file_read_all(const char *path, size_t len_max, void **out, size_t *len,
                            struct rk_errbuf *eb);

/* --- directories ------------------------------------------------------------ */

/* mkdir -p with mode 0755; each directory it creates is made durable by an
 * fsync of its parent. RK_EIO (errno kept from the failing mkdir, the path in
 * eb) when a component cannot be made. */
RK_API int rk_mkdirs(const char *path, struct rk_errbuf *eb);
/* fsync the directory `dir` (so that a rename or unlink in it is durable).
 * RK_EIO with errno kept on failure. */
RK_API int rk_dir_fsync(const char *dir);

/* --- 16-bit floats ---------------------------------------------------------- */

/* n little-endian elements of dtype F32, F16 or BF16 at src (any alignment)
 * to fp32 at dst. F16 subnormals, infinities and NaN are kept. */
RK_API void rk_elems_to_f32(float *dst, const void *src, size_t n, enum rk_dtype dt);

/* --- string buffer ---------------------------------------------------------- */

/* A growable NUL-terminated byte buffer. Zero-initialise it; free with
 * rk_buf_free. After an allocation failure the appends do nothing and
 * `oom` stays set (check it once at the end). */
struct rk_buf {
    char *p;
    size_t len, cap;
    bool oom;
};
/* Room for `extra` more bytes (plus the NUL); false (and oom) if not. */
RK_API bool rk_buf_reserve(struct rk_buf *b, size_t extra);
RK_API void rk_buf_put(struct rk_buf *b, const char *s, size_t n);
RK_API void rk_buf_puts(struct rk_buf *b, const char *s);
RK_API void rk_buf_printf(struct rk_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Append s[0..n) as a JSON string literal with quotes: '"' '\\' and control
 * characters escaped, other bytes copied (the caller passes UTF-8). */
RK_API void rk_buf_json_str(struct rk_buf *b, const char *s, size_t n);
RK_API void rk_buf_free(struct rk_buf *b);

#endif /* RK_FILEIO_H */
