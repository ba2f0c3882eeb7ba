/* fuzz_cli.c - libFuzzer harness for the command-line program's input paths,
 * run in process through the commands' entry points (tools/cli.h):
 *
 *   mode 0  `train --data F.csv --dry-run` on the input as a CSV file;
 *   mode 1  `train --data DIR --dry-run` on a folder of up to four image files
 *           cut from the input at each "SDIMG" separator;
 *   mode 2  `info F.safetensors --tensors` on the input as a checkpoint;
 *   mode 3  `train --data good.csv --dry-run` followed by up to 16 options
 *           taken from the input's lines (the option parser and its checks).
 *
 * The first byte picks the mode (byte % 4), the rest is the payload. Beyond
 * "no crash, no sanitizer report, no hang (-timeout), no runaway memory
 * (-rss_limit_mb)", every command must return 0, 1 or 2 (the CLI's exit
 * codes). Everything happens in
 * one private temporary directory; tools/fuzz.sh cli builds and runs this
 * with stdout and stderr closed (-close_fd_mask=3: the commands print).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root[64], csv[96], good[96], imgdir[96], ckpt[96];

static void setup(void)
{
    if (root[0]) return;
    snprintf(root, sizeof root, "/tmp/fuzz_cli_XXXXXX");
    if (!mkdtemp(root)) abort();
    snprintf(csv, sizeof csv, "%s/points.csv", root);
    snprintf(good, sizeof good, "%s/good.csv", root);
    snprintf(imgdir, sizeof imgdir, "%s/images", root);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", root);
    if (mkdir(imgdir, 0755) != 0) abort();
    /* relative paths among fuzzed options land in the temporary directory */
    if (chdir(root) != 0) abort();
    FILE *f = fopen(good, "w");
    if (!f) abort();
    for (int i = 0; i < 64; i++) fprintf(f, "%d.5,%d\n", i % 7 - 3, i % 5 - 2);
    if (fclose(f) != 0) abort();
}

static void write_file(const char *path, const uint8_t *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) abort();
}

/* Remove the previous input's images. */
static void clear_images(void)
{
    DIR *d = opendir(imgdir);
    if (!d) abort();
    struct dirent *e;
    char p[256];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", imgdir, e->d_name);
            unlink(p);
        }
    closedir(d);
}

static int run(int (*cmd)(int, char **), char **argv)
{
    int argc = 0;
    while (argv[argc]) argc++;
    int rc = cmd(argc, argv);
    if (rc < 0 || rc > 2) abort();
    return rc;
}

static const uint8_t *find(const uint8_t *p, const uint8_t *end, const char *needle)
{
    size_t k = strlen(needle);
    for (; p + k <= end; p++)
        if (memcmp(p, needle, k) == 0) return p;
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536) return 0;
    setup();
    const uint8_t *body = data + 1, *end = data + size;
    size_t n = size - 1;
    switch (data[0] % 4) {
    case 0: {
        write_file(csv, body, n);
        char *argv[] = {"train", "--data", csv, "--dry-run", "--threads", "1", NULL};
        run(sd_cmd_train, argv);
        break;
    }
    case 1: {
        clear_images();
        const uint8_t *p = body;
        for (int k = 0; k < 4 && p <= end; k++) {
            const uint8_t *sep = find(p, end, "SDIMG");
            const uint8_t *stop = sep ? sep : end;
            char path[160];
            snprintf(path, sizeof path, "%s/i%d.png", imgdir, k);
            write_file(path, p, (size_t)(stop - p));
            if (!sep) break;
            p = sep + 5;
        }
        char *argv[] = {"train", "--data", imgdir, "--dry-run", "--threads", "1", NULL};
        run(sd_cmd_train, argv);
        break;
    }
    case 2: {
        write_file(ckpt, body, n);
        char *argv[] = {"info", ckpt, "--tensors", NULL};
        run(sd_cmd_info, argv);
        break;
    }
    default: {
        /* Lines of the payload become options (NUL-free copies). */
        char buf[4096];
        size_t m = n < sizeof buf - 1 ? n : sizeof buf - 1;
        memcpy(buf, body, m);
        buf[m] = '\0';
        char *argv[24] = {"train", "--data", good, "--dry-run", "--threads", "1"};
        int argc = 6;
        for (char *tok = strtok(buf, "\n"); tok && argc < 22; tok = strtok(NULL, "\n"))
            argv[argc++] = tok;
        argv[argc] = NULL;
        run(sd_cmd_train, argv);
        break;
    }
    }
    return 0;
}
