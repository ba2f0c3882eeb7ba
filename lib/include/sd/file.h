/* file.h - the one file layer: crash-safe writes, bounded reads, readers that
 * never block.
 *
 * Every file scorediff writes (checkpoints, PNGs, config.json, metrics.csv,
 * sample and likelihood outputs) goes through the atomic writer below, and
 * every file it reads through sd_file_open_read / sd_file_read_all, so that
 * the rules are written once:
 *
 * Writing. The bytes go to a temporary file in the target's directory,
 * "<path>.tmp.<pid>.<n>" (created with O_EXCL, mode 0644 less the umask; no
 * image or data extension, so a crash leaves nothing a loader would pick up).
 * sd_file_writer_commit then flushes, fsyncs and closes it (all checked),
 * rename()s it over path and fsyncs the directory. A crash or a concurrent
 * reader therefore sees either the old file or the complete new one, never a
 * torn file; if anything fails before the rename the temporary file is
 * removed and an existing file at path is untouched. sd_file_writer_abort
 * (also safe after a failed write) removes the temporary file.
 *
 *     sd_file_writer *w;
 *     if (sd_file_writer_open("out.bin", &w) != SD_OK) return ...;
 *     sd_status st = sd_file_writer_write(w, head, head_len);
 *     if (st == SD_OK) st = sd_file_writer_write(w, body, body_len);
 *     if (st == SD_OK) st = sd_file_writer_commit(w);   // frees w
 *     else sd_file_writer_abort(w);                     // frees w
 *
 * For text written piecewise with fprintf, sd_file_writer_stream gives a
 * FILE* on the temporary file; its errors are caught by commit (ferror and
 * fflush are checked there).
 *
 * Reading. sd_file_open_read opens with O_NONBLOCK, so that a FIFO (or a
 * device) named as input never blocks the process, fstat()s the descriptor
 * and refuses anything but a regular file with "<path>: not a regular file";
 * then it clears O_NONBLOCK. The descriptor may be wrapped with fdopen (see
 * sd_file_fopen_read) or zlib's gzdopen. sd_file_read_all reads a whole
 * regular file of at most cap bytes and refuses a larger one with a message
 * giving both sizes: it never truncates.
 *
 * Errors: SD_ERR_IO (open, read, write, fsync, close, rename; the message
 * names the path and gives strerror), SD_ERR_FORMAT (a file over the cap),
 * SD_ERR_INVALID (NULL arguments), SD_ERR_NOMEM. Messages start with the path:
 * "run/config.json: cannot open: No such file or directory".
 *
 * Threading: writers are independent objects; the fault hook is per thread.
 */
#ifndef SD_FILE_H
#define SD_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sd/status.h"

/* ---- writing ---- */

typedef struct sd_file_writer sd_file_writer;

/* Creates the temporary file next to path. On failure *out is NULL. A path
 * that exists as a device, FIFO or socket is refused ("not a regular file"):
 * the rename would replace it. A symbolic link is replaced, not followed. */
sd_status sd_file_writer_open(const char *path, sd_file_writer **out);

/* Appends len bytes. After a failure the writer only accepts abort. */
sd_status sd_file_writer_write(sd_file_writer *w, const void *buf, size_t len);

/* A stdio stream on the temporary file for formatted output (owned by the
 * writer: do not fclose it). NULL (with a message) if fdopen fails. */
FILE *sd_file_writer_stream(sd_file_writer *w);

/* fflush, fsync, close, rename over the target, fsync of the directory.
 * Frees w whatever happens. If the directory fsync fails the new file is in
 * place (the rename happened) but the error is still reported. */
sd_status sd_file_writer_commit(sd_file_writer *w);

/* Removes the temporary file and frees w. NULL is a no-op. */
void sd_file_writer_abort(sd_file_writer *w);

/* The whole of buf[0..len) to path, atomically (open, write, commit). */
sd_status sd_file_write_atomic(const char *path, const void *buf, size_t len);

/* ---- reading ---- */

/* Opens a regular file read-only without ever blocking (see above). On success
 * *fd is a blocking descriptor (O_CLOEXEC) the caller closes, and *size (if not
 * NULL) its size in bytes. */
sd_status sd_file_open_read(const char *path, int *fd, uint64_t *size);

/* As sd_file_open_read, as a stdio stream (mode "r" or "rb"). */
sd_status sd_file_fopen_read(const char *path, FILE **out);

/* Reads the whole regular file at path if it has at most cap bytes. *buf (free
 * with sd_free) holds *len bytes plus a terminating NUL, so text can be parsed
 * in place. A file over cap, or one that grows or shrinks while read, is an
 * error; nothing is ever silently cut. */
sd_status sd_file_read_all(const char *path, size_t cap, char **buf, size_t *len);

/* ---- fault injection (tests only) ---- */

/* The points of an atomic write where a test may stop or fail the writer. */
typedef enum sd_file_stage {
    SD_FILE_STAGE_CHUNK,   /* after each piece written; bytes = total so far */
    SD_FILE_STAGE_WRITTEN, /* after the last byte, before fflush/fsync */
    SD_FILE_STAGE_SYNCED,  /* after fsync and close, before the rename */
    SD_FILE_STAGE_RENAMED  /* after the rename, before the directory fsync */
} sd_file_stage;

/* Called at each stage with the target path and the bytes written so far. A
 * non-zero return makes that step fail as an I/O error (EIO) would: before
 * the rename the temporary file is removed and the old file kept; at
 * SD_FILE_STAGE_RENAMED the new file stays and the error is returned. A hook
 * may also stop or kill the process there (tests/test_train_cli.c). */
typedef int (*sd_file_fault_fn)(void *ctx, sd_file_stage stage, const char *path,
                                uint64_t bytes);

/* Installs fn (NULL removes it) for writers used on the calling thread. While
 * a hook is installed and max_chunk > 0, writes are cut into pieces of at most
 * max_chunk bytes, so that a test can stop inside a header or a tensor. For
 * tests: production code never sets it. */
void sd_file_set_fault_hook(sd_file_fault_fn fn, void *ctx, size_t max_chunk);

/* The stage's name ("chunk", "written", "synced", "renamed"). */
const char *sd_file_stage_name(sd_file_stage stage);

#endif
