/* test_file.c - the file layer (sd/file.h): atomic writes that leave the old
 * file or the new one and never a temporary file, reads that refuse what is
 * too large or not a regular file (a FIFO without blocking), and the fault
 * hook the crash tests rely on (stages in order, byte counts, chunking).
 *
 * Every test works in its own mkdtemp directory. Failures of the system calls
 * are produced for real where that is possible without privileges (a missing
 * directory, a directory as the target, RLIMIT_FSIZE) and through the fault
 * hook otherwise (fsync, close, the directory fsync).
 */
#define _XOPEN_SOURCE 700
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sd/file.h"
#include "test_tmp.h"

/* Entries of dir whose name contains ".tmp.": the writer's temporary files. */
static int count_temps(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* The file's bytes (NUL-terminated, with its length) or NULL if absent. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 16);
    ck_assert_ptr_nonnull(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

static void assert_content(const char *path, const char *want)
{
    size_t n;
    char *got = slurp(path, &n);
    ck_assert_msg(got != NULL, "%s is missing", path);
    ck_assert_uint_eq(n, strlen(want));
    ck_assert_str_eq(got, want);
    free(got);
}

#define ASSERT_MSG_HAS(needle)                                                                 \
    ck_assert_msg(strstr(sd_error_message(), needle) != NULL, "message \"%s\" lacks \"%s\"",  \
                  sd_error_message(), needle)

/* ---- the hook: records stages, fails one ---------------------------------- */

typedef struct rec {
    int n;
    sd_file_stage stage[64];
    uint64_t bytes[64];
    int fail_stage;      /* -1: never fail */
    uint64_t fail_bytes; /* for CHUNK: fail at the first piece reaching this count */
} rec;

static int record(void *ctx, sd_file_stage stage, const char *path, uint64_t bytes)
{
    rec *r = ctx;
    ck_assert_ptr_nonnull(path);
    if (r->n < 64) {
        r->stage[r->n] = stage;
        r->bytes[r->n] = bytes;
        r->n++;
    }
    return (int)stage == r->fail_stage && (stage != SD_FILE_STAGE_CHUNK || bytes >= r->fail_bytes);
}

/* ---- writing ----------------------------------------------------------------- */

START_TEST(test_write_round_trip)
{
    tu_make_tmpdir("sd_file_test");
    const char *p = tu_at("a.txt");
    ck_assert_int_eq(sd_file_write_atomic(p, "hello\n", 6), SD_OK);
    assert_content(p, "hello\n");
    ck_assert_int_eq(sd_file_write_atomic(p, "second version\n", 15), SD_OK);
    assert_content(p, "second version\n");
    ck_assert_int_eq(sd_file_write_atomic(p, "", 0), SD_OK); /* an empty file is a file */
    assert_content(p, "");
    ck_assert_int_eq(count_temps(tu_tmpdir), 0);
    /* mode 0644 less the umask, as fopen(.., "w") would give */
    mode_t um = umask(022);
    umask(um);
    struct stat sb;
    ck_assert_int_eq(stat(p, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0644 & ~um);

    /* streaming: chunks and a stdio stream on the same writer */
    sd_file_writer *w;
    ck_assert_int_eq(sd_file_writer_open(p, &w), SD_OK);
    ck_assert_int_eq(count_temps(tu_tmpdir), 1);
    assert_content(p, ""); /* not replaced before commit */
    ck_assert_int_eq(sd_file_writer_write(w, "x,", 2), SD_OK);
    FILE *f = sd_file_writer_stream(w);
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%d\n", 42);
    ck_assert_int_eq(sd_file_writer_write(w, "end\n", 4), SD_OK);
    ck_assert_int_eq(sd_file_writer_commit(w), SD_OK);
    assert_content(p, "x,42\nend\n");
    ck_assert_int_eq(count_temps(tu_tmpdir), 0);
    tu_remove_tmpdir();
}
END_TEST

START_TEST(test_abort_removes_temp)
{
    tu_make_tmpdir("sd_file_test");
    const char *p = tu_at("keep.csv");
    ck_assert_int_eq(sd_file_write_atomic(p, "old\n", 4), SD_OK);
    sd_file_writer *w;
    ck_assert_int_eq(sd_file_writer_open(p, &w), SD_OK);
    ck_assert_int_eq(sd_file_writer_write(w, "new new new\n", 12), SD_OK);
    ck_assert_int_eq(count_temps(tu_tmpdir), 1);
    sd_file_writer_abort(w);
    ck_assert_int_eq(count_temps(tu_tmpdir), 0);
    assert_content(p, "old\n");
    /* with a stream holding buffered text */
    ck_assert_int_eq(sd_file_writer_open(p, &w), SD_OK);
    fprintf(sd_file_writer_stream(w), "buffered");
    sd_file_writer_abort(w);
    ck_assert_int_eq(count_temps(tu_tmpdir), 0);
    assert_content(p, "old\n");
    sd_file_writer_abort(NULL); /* a no-op */
    /* a writer for a new name leaves nothing at all */
    ck_assert_int_eq(sd_file_writer_open(tu_at("new.csv"), &w), SD_OK);
    sd_file_writer_abort(w);
    ck_assert_int_eq(access(tu_at("new.csv"), F_OK), -1);
    tu_remove_tmpdir();
}
END_TEST

/* Each stage's failure: before the rename the old file stays and the temp
 * file goes; after it the new file is in place and the error is reported. */
START_TEST(test_commit_failures_keep_old)
{
    tu_make_tmpdir("sd_file_test");
    const char *p = tu_at("ckpt.bin");
    const char *old = "old contents\n", *neu = "the new contents, longer than a chunk\n";
    for (int stage = SD_FILE_STAGE_CHUNK; stage <= SD_FILE_STAGE_RENAMED; stage++) {
        ck_assert_int_eq(sd_file_write_atomic(p, old, strlen(old)), SD_OK);
        rec r = {.fail_stage = stage, .fail_bytes = 16};
        sd_file_set_fault_hook(record, &r, 8);
        sd_status st = sd_file_write_atomic(p, neu, strlen(neu));
        sd_file_set_fault_hook(NULL, NULL, 0);
        ck_assert_msg(st == SD_ERR_IO, "stage %s: status %d", sd_file_stage_name(stage), st);
        ASSERT_MSG_HAS(p);
        ASSERT_MSG_HAS(strerror(EIO));
        ck_assert_int_eq(count_temps(tu_tmpdir), 0);
        assert_content(p, stage == SD_FILE_STAGE_RENAMED ? neu : old);
        if (stage == SD_FILE_STAGE_CHUNK) ck_assert_uint_eq(r.bytes[r.n - 1], 16);
    }
    tu_remove_tmpdir();
}
END_TEST

START_TEST(test_real_failures_keep_old)
{
    tu_make_tmpdir("sd_file_test");
    char p[512]; /* tu_at() reuses its buffers */
    snprintf(p, sizeof p, "%s", tu_at("data.bin"));
    ck_assert_int_eq(sd_file_write_atomic(p, "old\n", 4), SD_OK);

    /* the directory does not exist: the temp file cannot be created */
    ck_assert_int_eq(sd_file_write_atomic(tu_at("no/such/x.bin"), "x", 1), SD_ERR_IO);
    ASSERT_MSG_HAS("no/such/x.bin: cannot create temporary file");
    ASSERT_MSG_HAS(strerror(ENOENT));

    /* the target is a directory: everything is written, the rename fails */
    ck_assert_int_eq(mkdir(tu_at("adir"), 0755), 0);
    ck_assert_int_eq(sd_file_write_atomic(tu_at("adir"), "x", 1), SD_ERR_IO);
    ASSERT_MSG_HAS("cannot rename");
    struct stat sb;
    ck_assert_int_eq(stat(tu_at("adir"), &sb), 0);
    ck_assert(S_ISDIR(sb.st_mode));

    /* the file size limit is hit in the middle (EFBIG), through a stream too */
    enum { BIG = 1 << 16 };
    char *big = calloc(BIG, 1);
    struct rlimit lim, saved;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &saved), 0);
    lim = saved;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    sd_status a = sd_file_write_atomic(p, big, BIG);
    char msg_a[512];
    snprintf(msg_a, sizeof msg_a, "%s", sd_error_message());
    sd_file_writer *w;
    sd_status b = sd_file_writer_open(p, &w);
    if (b == SD_OK) {
        FILE *f = sd_file_writer_stream(w);
        for (int i = 0; i < BIG / 8; i++) fprintf(f, "%07d\n", i);
        b = sd_file_writer_commit(w);
    }
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, prev);
    ck_assert_int_eq(a, SD_ERR_IO);
    ck_assert_int_eq(b, SD_ERR_IO);
    ASSERT_MSG_HAS("data.bin: writing");
    ck_assert_msg(strstr(msg_a, strerror(EFBIG)), "%s", msg_a);
    free(big);

    /* a read-only directory (root ignores permissions: skipped) */
    if (geteuid() != 0) {
        ck_assert_int_eq(chmod(tu_tmpdir, 0555), 0);
        ck_assert_int_eq(sd_file_write_atomic(p, "x", 1), SD_ERR_IO);
        ck_assert_int_eq(chmod(tu_tmpdir, 0755), 0);
    }
    ck_assert_int_eq(count_temps(tu_tmpdir), 0);
    assert_content(p, "old\n");
    tu_remove_tmpdir();
}
END_TEST

/* The hook sees every piece (at most max_chunk bytes) and then the three
 * commit stages, in order, with the byte count. */
START_TEST(test_hook_stages)
{
    tu_make_tmpdir("sd_file_test");
    rec r = {.fail_stage = -1};
    sd_file_set_fault_hook(record, &r, 7);
    ck_assert_int_eq(sd_file_write_atomic(tu_at("h.txt"), "0123456789abcdefghij", 20), SD_OK);
    static const uint64_t want_bytes[] = {7, 14, 20, 20, 20, 20};
    static const sd_file_stage want_stage[] = {SD_FILE_STAGE_CHUNK, SD_FILE_STAGE_CHUNK,
                                               SD_FILE_STAGE_CHUNK, SD_FILE_STAGE_WRITTEN,
                                               SD_FILE_STAGE_SYNCED, SD_FILE_STAGE_RENAMED};
    ck_assert_int_eq(r.n, 6);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(r.stage[i], want_stage[i]);
        ck_assert_uint_eq(r.bytes[i], want_bytes[i]);
    }
    /* without max_chunk a write is one piece; removing the hook stops calls */
    r.n = 0;
    sd_file_set_fault_hook(record, &r, 0);
    ck_assert_int_eq(sd_file_write_atomic(tu_at("h.txt"), "0123456789abcdefghij", 20), SD_OK);
    ck_assert_int_eq(r.n, 4);
    sd_file_set_fault_hook(NULL, NULL, 0);
    r.n = 0;
    ck_assert_int_eq(sd_file_write_atomic(tu_at("h.txt"), "x", 1), SD_OK);
    ck_assert_int_eq(r.n, 0);
    ck_assert_str_eq(sd_file_stage_name(SD_FILE_STAGE_RENAMED), "renamed");
    tu_remove_tmpdir();
}
END_TEST

/* ---- reading ----------------------------------------------------------------- */

START_TEST(test_read_cap)
{
    tu_make_tmpdir("sd_file_test");
    const char *p = tu_at("r.json");
    char text[101];
    memset(text, 'a', 100);
    text[100] = '\0';
    ck_assert_int_eq(sd_file_write_atomic(p, text, 100), SD_OK);
    char *buf = NULL;
    size_t len = 1;
    ck_assert_int_eq(sd_file_read_all(p, 99, &buf, &len), SD_ERR_FORMAT);
    ck_assert_ptr_null(buf);
    ck_assert_uint_eq(len, 0);
    ASSERT_MSG_HAS("r.json: file of 100 bytes exceeds the 99-byte limit");
    ck_assert_int_eq(sd_file_read_all(p, 100, &buf, &len), SD_OK);
    ck_assert_uint_eq(len, 100);
    ck_assert_str_eq(buf, text); /* NUL-terminated */
    sd_free(buf);
    /* an empty file, a missing one */
    ck_assert_int_eq(sd_file_write_atomic(p, "", 0), SD_OK);
    ck_assert_int_eq(sd_file_read_all(p, 0, &buf, &len), SD_OK);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(buf, "");
    sd_free(buf);
    ck_assert_int_eq(sd_file_read_all(tu_at("missing.json"), 10, &buf, &len), SD_ERR_IO);
    ASSERT_MSG_HAS("missing.json: cannot open: ");
    ASSERT_MSG_HAS(strerror(ENOENT));
    tu_remove_tmpdir();
}
END_TEST

/* A FIFO with no writer: open(2) without O_NONBLOCK would wait forever (the
 * suite's meson timeout then fails it); the layer refuses it at once. */
START_TEST(test_fifo_and_directory_refused)
{
    tu_make_tmpdir("sd_file_test");
    const char *fifo = tu_at("pipe.csv");
    ck_assert_int_eq(mkfifo(fifo, 0644), 0);
    char *buf;
    size_t len;
    int fd = -1;
    FILE *f = NULL;
    ck_assert_int_eq(sd_file_read_all(fifo, 1 << 20, &buf, &len), SD_ERR_IO);
    ASSERT_MSG_HAS("pipe.csv: not a regular file");
    ck_assert_int_eq(sd_file_open_read(fifo, &fd, NULL), SD_ERR_IO);
    ck_assert_int_eq(fd, -1);
    ASSERT_MSG_HAS("pipe.csv: not a regular file");
    ck_assert_int_eq(sd_file_fopen_read(fifo, &f), SD_ERR_IO);
    ck_assert_ptr_null(f);
    ASSERT_MSG_HAS("pipe.csv: not a regular file");

    ck_assert_int_eq(sd_file_read_all(tu_tmpdir, 1 << 20, &buf, &len), SD_ERR_IO);
    ASSERT_MSG_HAS("not a regular file");
    ck_assert_int_eq(sd_file_fopen_read("/dev/null", &f), SD_ERR_IO);
    ASSERT_MSG_HAS("/dev/null: not a regular file");

    /* as an output target: refused before anything is created, still a FIFO */
    ck_assert_int_eq(sd_file_write_atomic(fifo, "x", 1), SD_ERR_IO);
    ASSERT_MSG_HAS("pipe.csv: not a regular file");
    struct stat sb;
    ck_assert_int_eq(stat(fifo, &sb), 0);
    ck_assert(S_ISFIFO(sb.st_mode));
    ck_assert_int_eq(count_temps(tu_tmpdir), 0);

    /* a regular file: the descriptor blocks again (O_NONBLOCK cleared) */
    ck_assert_int_eq(sd_file_write_atomic(tu_at("ok.txt"), "abc", 3), SD_OK);
    uint64_t size = 0;
    ck_assert_int_eq(sd_file_open_read(tu_at("ok.txt"), &fd, &size), SD_OK);
    ck_assert_uint_eq(size, 3);
    ck_assert_int_eq(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    close(fd);
    ck_assert_int_eq(sd_file_fopen_read(tu_at("ok.txt"), &f), SD_OK);
    char got[8] = {0};
    ck_assert_uint_eq(fread(got, 1, sizeof got, f), 3);
    fclose(f);
    ck_assert_str_eq(got, "abc");
    tu_remove_tmpdir();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file");
    TCase *tc = tcase_create("file");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_write_round_trip);
    tcase_add_test(tc, test_abort_removes_temp);
    tcase_add_test(tc, test_commit_failures_keep_old);
    tcase_add_test(tc, test_real_failures_keep_old);
    tcase_add_test(tc, test_hook_stages);
    tcase_add_test(tc, test_read_cap);
    tcase_add_test(tc, test_fifo_and_directory_refused);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
