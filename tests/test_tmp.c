/* test_tmp.c - see test_tmp.h. */
#define _XOPEN_SOURCE 700
#include "test_tmp.h"

#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

char tu_tmpdir[256];

void tu_make_tmpdir(const char *prefix)
{
    snprintf(tu_tmpdir, sizeof tu_tmpdir, "/tmp/%s_XXXXXX", prefix);
    ck_assert_ptr_nonnull(mkdtemp(tu_tmpdir));
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

void tu_remove_tmpdir(void)
{
    chmod(tu_tmpdir, 0755); /* a test may have made it read-only */
    nftw(tu_tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *tu_at(const char *name)
{
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tu_tmpdir, name);
    return buf[k];
}

char *tu_read_all(const char *path, size_t *len)
{
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)(n > 0 ? n : 0) + 1);
    ck_assert_ptr_nonnull(buf);
    size_t got = n > 0 ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    buf[got] = '\0';
    if (len) *len = got;
    return buf;
}
