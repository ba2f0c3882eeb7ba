/* file.c - crash-safe writer and non-blocking, bounded readers; see sd/file.h. */
#define _POSIX_C_SOURCE 200809L
#include "sd/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct sd_file_writer {
    char *path;     /* the target */
    char *tmp;      /* the temporary file beside it */
    int fd;         /* -1 once closed */
    FILE *stream;   /* fdopen(fd) if the caller asked for one; owns fd then */
    uint64_t bytes; /* written so far */
    bool failed;    /* a write failed: only abort is allowed */
};

/* ---- fault hook (tests) ---- */

static _Thread_local sd_file_fault_fn hook_fn;
static _Thread_local void *hook_ctx;
static _Thread_local size_t hook_chunk;

void sd_file_set_fault_hook(sd_file_fault_fn fn, void *ctx, size_t max_chunk)
{
    hook_fn = fn;
    hook_ctx = fn ? ctx : NULL;
    hook_chunk = fn ? max_chunk : 0;
}

const char *sd_file_stage_name(sd_file_stage stage)
{
    switch (stage) {
    case SD_FILE_STAGE_CHUNK: return "chunk";
    case SD_FILE_STAGE_WRITTEN: return "written";
    case SD_FILE_STAGE_SYNCED: return "synced";
    case SD_FILE_STAGE_RENAMED: return "renamed";
    }
    return "?";
}

/* 0, or -1 with errno = EIO if the test hook injects a fault here. */
static int fault(const sd_file_writer *w, sd_file_stage stage)
{
    if (hook_fn && hook_fn(hook_ctx, stage, w->path, w->bytes)) {
        errno = EIO;
        return -1;
    }
    return 0;
}

/* ---- writer ---- */

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = sd_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

sd_status sd_file_writer_open(const char *path, sd_file_writer **out)
{
    if (!out) return sd_error(SD_ERR_INVALID, "sd_file_writer_open: NULL argument");
    *out = NULL;
    if (!path || !*path) return sd_error(SD_ERR_INVALID, "sd_file_writer_open: empty path");
    /* rename() would replace a device, FIFO or socket (say /dev/stdout, or
     * /dev/null when run as root) by a regular file: refuse those. A
     * directory fails at the rename, after the temporary file is removed. */
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode))
        return sd_error(SD_ERR_IO, "%s: not a regular file (an output is written beside it and "
                        "renamed over it)", path);
    sd_file_writer *w = sd_calloc(1, sizeof *w);
    size_t cap = strlen(path) + 64;
    if (!w || !(w->path = dup_str(path)) || !(w->tmp = sd_malloc(cap))) {
        if (w) sd_free(w->path);
        sd_free(w);
        return SD_ERR_NOMEM;
    }
    w->fd = -1;
    /* Same directory as the target, so that rename() is atomic. The pid names
     * a killed writer's leftovers; the counter separates threads and retries
     * (O_EXCL: an old file of a recycled pid is never written through). */
    static atomic_uint counter;
    for (int attempt = 0; attempt < 100 && w->fd < 0; attempt++) {
        snprintf(w->tmp, cap, "%s.tmp.%ld.%u", path, (long)getpid(),
                 atomic_fetch_add(&counter, 1u));
        w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (w->fd < 0 && errno != EEXIST) break;
    }
    if (w->fd < 0) {
        sd_status st = sd_error(SD_ERR_IO, "%s: cannot create temporary file '%s': %s", path,
                                w->tmp, strerror(errno));
        sd_free(w->tmp);
        sd_free(w->path);
        sd_free(w);
        return st;
    }
    *out = w;
    return SD_OK;
}

static int write_fd(int fd, const unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t k = write(fd, p, len);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = EIO;
            return -1;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

sd_status sd_file_writer_write(sd_file_writer *w, const void *buf, size_t len)
{
    if (!w || (!buf && len)) return sd_error(SD_ERR_INVALID, "sd_file_writer_write: NULL argument");
    if (w->failed) return sd_error(SD_ERR_IO, "%s: an earlier write failed", w->path);
    const unsigned char *p = buf;
    while (len > 0) {
        size_t piece = hook_fn && hook_chunk && hook_chunk < len ? hook_chunk : len;
        int rc = w->stream ? (fwrite(p, 1, piece, w->stream) == piece ? 0 : -1)
                           : write_fd(w->fd, p, piece);
        if (rc == 0) {
            w->bytes += piece;
            rc = fault(w, SD_FILE_STAGE_CHUNK);
        }
        if (rc != 0) {
            w->failed = true;
            return sd_error(SD_ERR_IO, "%s: writing '%s' failed: %s", w->path, w->tmp,
                            strerror(errno));
        }
        p += piece;
        len -= piece;
    }
    return SD_OK;
}

FILE *sd_file_writer_stream(sd_file_writer *w)
{
    if (!w || w->failed) {
        sd_error(SD_ERR_INVALID, "sd_file_writer_stream: no usable writer");
        return NULL;
    }
    if (!w->stream && !(w->stream = fdopen(w->fd, "wb")))
        sd_error(SD_ERR_IO, "%s: cannot open a stream on '%s': %s", w->path, w->tmp,
                 strerror(errno));
    return w->stream;
}

static void writer_free(sd_file_writer *w)
{
    sd_free(w->tmp);
    sd_free(w->path);
    sd_free(w);
}

/* Closes the descriptor (or stream) if still open; 0 or -1 with errno. */
static int writer_close(sd_file_writer *w)
{
    int rc = 0;
    if (w->stream) rc = fclose(w->stream);
    else if (w->fd >= 0) rc = close(w->fd);
    w->stream = NULL;
    w->fd = -1;
    return rc;
}

void sd_file_writer_abort(sd_file_writer *w)
{
    if (!w) return;
    int e = errno;
    writer_close(w);
    unlink(w->tmp);
    writer_free(w);
    errno = e;
}

/* fsync the directory holding path, so that the rename itself is durable. */
static sd_status sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t dlen = !slash ? 1 : slash == path ? 1 : (size_t)(slash - path);
    char *dir = sd_malloc(dlen + 1);
    if (!dir) return SD_ERR_NOMEM;
    memcpy(dir, slash ? path : ".", dlen);
    dir[dlen] = '\0';
    sd_status st = SD_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    /* Some file systems refuse fsync on a directory (EINVAL); the rename
     * still holds there. */
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP))
        st = sd_error(SD_ERR_IO, "%s: written, but syncing directory '%s' failed: %s", path, dir,
                      strerror(errno));
    if (fd >= 0) close(fd);
    sd_free(dir);
    return st;
}

sd_status sd_file_writer_commit(sd_file_writer *w)
{
    if (!w) return sd_error(SD_ERR_INVALID, "sd_file_writer_commit: NULL writer");
    if (w->failed) {
        sd_status st = sd_error(SD_ERR_IO, "%s: an earlier write failed", w->path);
        sd_file_writer_abort(w);
        return st;
    }
    const char *what = "writing";
    int rc = fault(w, SD_FILE_STAGE_WRITTEN);
    if (rc == 0 && w->stream) {
        errno = 0;
        if (fflush(w->stream) != 0 || ferror(w->stream)) {
            if (!errno) errno = EIO; /* ferror set by an earlier fprintf */
            rc = -1;
        }
    }
    if (rc == 0 && fsync(w->fd) != 0) {
        what = "syncing";
        rc = -1;
    }
    if (rc == 0) {
        rc = writer_close(w);
        what = "closing";
    }
    if (rc == 0) {
        rc = fault(w, SD_FILE_STAGE_SYNCED);
        what = "finishing";
    }
    if (rc != 0) {
        sd_status st = sd_error(SD_ERR_IO, "%s: %s '%s' failed: %s", w->path, what, w->tmp,
                                strerror(errno));
        sd_file_writer_abort(w);
        return st;
    }
    if (rename(w->tmp, w->path) != 0) {
        sd_status st = sd_error(SD_ERR_IO, "%s: cannot rename '%s' over it: %s", w->path, w->tmp,
                                strerror(errno));
        sd_file_writer_abort(w);
        return st;
    }
    sd_status st = SD_OK;
    if (fault(w, SD_FILE_STAGE_RENAMED) != 0)
        st = sd_error(SD_ERR_IO, "%s: written, but syncing its directory failed: %s", w->path,
                      strerror(errno));
    else
        st = sync_dir(w->path);
    writer_free(w); /* renamed: no temporary file is left to remove */
    return st;
}

sd_status sd_file_write_atomic(const char *path, const void *buf, size_t len)
{
    sd_file_writer *w;
    sd_status st = sd_file_writer_open(path, &w);
    if (st != SD_OK) return st;
    if ((st = sd_file_writer_write(w, buf, len)) != SD_OK) {
        sd_file_writer_abort(w);
        return st;
    }
    return sd_file_writer_commit(w);
}

/* ---- reading ---- */

sd_status sd_file_open_read(const char *path, int *fd_out, uint64_t *size)
{
    if (!path || !fd_out) return sd_error(SD_ERR_INVALID, "sd_file_open_read: NULL argument");
    *fd_out = -1;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
     * writer forever; it is refused below. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return sd_error(SD_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return sd_error(SD_ERR_IO, "%s: not a regular file", path);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    *fd_out = fd;
    if (size) *size = sb.st_size > 0 ? (uint64_t)sb.st_size : 0;
    return SD_OK;
}

sd_status sd_file_fopen_read(const char *path, FILE **out)
{
    if (!out) return sd_error(SD_ERR_INVALID, "sd_file_fopen_read: NULL argument");
    *out = NULL;
    int fd;
    sd_status st = sd_file_open_read(path, &fd, NULL);
    if (st != SD_OK) return st;
    if (!(*out = fdopen(fd, "rb"))) {
        int e = errno;
        close(fd);
        return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    return SD_OK;
}

sd_status sd_file_read_all(const char *path, size_t cap, char **buf, size_t *len)
{
    if (!buf || !len) return sd_error(SD_ERR_INVALID, "sd_file_read_all: NULL argument");
    *buf = NULL;
    *len = 0;
    int fd;
    uint64_t size;
    sd_status st = sd_file_open_read(path, &fd, &size);
    if (st != SD_OK) return st;
    if (size > cap || size >= SIZE_MAX) {
        close(fd);
        return sd_error(SD_ERR_FORMAT, "%s: file of %llu bytes exceeds the %zu-byte limit", path,
                        (unsigned long long)size, cap);
    }
    size_t want = (size_t)size, got = 0;
    char *data = sd_malloc(want + 1);
    if (!data) {
        close(fd);
        return SD_ERR_NOMEM;
    }
    /* Read one byte past the size: a file that grew meanwhile is refused, not
     * cut at its old size. */
    for (;;) {
        char extra;
        ssize_t k = got < want ? read(fd, data + got, want - got) : read(fd, &extra, 1);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            st = sd_error(SD_ERR_IO, "%s: read error: %s", path, strerror(errno));
            break;
        }
        if (k == 0) {
            if (got < want)
                st = sd_error(SD_ERR_IO, "%s: read %zu of %zu bytes: the file shrank while read",
                              path, got, want);
            break;
        }
        if (got == want) {
            st = sd_error(SD_ERR_IO, "%s: the file grew while read", path);
            break;
        }
        got += (size_t)k;
    }
    close(fd); /* read-only: nothing is lost if close reports an error */
    if (st != SD_OK) {
        sd_free(data);
        return st;
    }
    data[want] = '\0';
    *buf = data;
    *len = want;
    return SD_OK;
}
