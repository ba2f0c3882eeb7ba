/* cmd_convert_idx.c - `scorediff convert-idx IDX_IMAGES OUT_DIR [--limit N]`:
 * (Fashion-)MNIST IDX image files (gzip-compressed or plain) to a folder of
 * gray PNGs that `scorediff train --data OUT_DIR` reads. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "sd/data.h"

#define CMD "convert-idx"

static void usage(FILE *f)
{
    fprintf(f,
"usage: scorediff convert-idx IDX_IMAGES OUT_DIR [--limit N]\n"
"\n"
"Writes the images of an IDX file [N, H, W] of unsigned bytes (LeCun's MNIST\n"
"format, also Fashion-MNIST; .gz or not) as OUT_DIR/00000.png, 00001.png, ...\n"
"(8-bit gray, names zero-padded to at least 5 digits). OUT_DIR is created if\n"
"needed; existing files of the same names are replaced.\n"
"  --limit N   convert only the first N images\n"
"Example (Debian package dataset-fashion-mnist):\n"
"  scorediff convert-idx /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz fm-train\n"
"Exit codes: 0 done, 1 write failure, 2 bad arguments or a malformed IDX file.\n");
}

int sd_cmd_convert_idx(int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    long long limit = -1;
    bool err = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (cli_opt(argc, argv, &i, "--limit", &v, &err, CMD)) {
            if (err || !cli_parse_int(CMD, "--limit", v, 1, UINT32_MAX, &limit)) return 2;
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1])
            return cli_fail(CMD, 2, "unknown option '%s' (see scorediff convert-idx --help)", argv[i]);
        if (npos == 2) return cli_fail(CMD, 2, "too many arguments (see --help)");
        pos[npos++] = argv[i];
    }
    if (npos != 2) {
        usage(stderr);
        return 2;
    }
    sd_idx idx;
    sd_status st = sd_idx_read(pos[0], &idx);
    if (st != SD_OK) return cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
    if (idx.ndim != 3) {
        int nd = idx.ndim;
        sd_idx_free(&idx);
        return cli_fail(CMD, 2, "%s: expected an IDX image file [N, H, W], got %d dimension%s "
                        "(a label file?)", pos[0], nd, nd == 1 ? "" : "s");
    }
    uint32_t total = idx.dims[0];
    if (limit > 0 && (uint64_t)limit < total) idx.dims[0] = (uint32_t)limit;
    fprintf(stderr, "scorediff convert-idx: writing %u of %u images (%ux%u) to %s\n", idx.dims[0],
            total, idx.dims[2], idx.dims[1], pos[1]);
    double t0 = cli_now();
    st = sd_idx_write_png_folder(&idx, pos[1]);
    uint32_t n = idx.dims[0];
    sd_idx_free(&idx);
    if (st != SD_OK) return cli_fail(CMD, st == SD_ERR_IO ? 1 : cli_exit_code(st), "%s",
                                     sd_error_message());
    fprintf(stderr, "scorediff convert-idx: wrote %u PNG files in %.1f s\n", n, cli_now() - t0);
    return 0;
}
