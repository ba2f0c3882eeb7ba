/* fuzz_csv.c - libFuzzer harness for the CSV point loader (sd_data_load_csv).
 *
 * The loader reads a path, so each input is written to one file in a private
 * temporary directory first (tools/fuzz.sh csv builds and runs this).
 * Invariants beyond "no crash / no sanitizer report": a failure leaves the
 * dataset empty; a success holds n >= 1 rows of the same dimension c >= 1,
 * every value finite (the loader refuses NaN and Inf), and loading the same
 * bytes twice gives the same numbers (no state kept between calls).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>

#include "sd/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

static void write_input(const uint8_t *data, size_t size)
{
    if (!path[0]) {
        char dir[] = "/tmp/fuzz_csv_XXXXXX";
        if (!mkdtemp(dir)) abort();
        snprintf(path, sizeof path, "%s/points.csv", dir);
    }
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    write_input(data, size);
    sd_dataset a, b;
    memset(&a, 0, sizeof a);
    if (sd_data_load_csv(path, &a) != SD_OK) {
        if (a.points || a.pixels || a.n) abort(); /* a failure must leave nothing behind */
        return 0;
    }
    if (a.kind != SD_DATA_POINTS || a.n < 1 || a.c < 1 || !a.points) abort();
    for (size_t i = 0; i < a.n * (size_t)a.c; i++)
        if (!isfinite(a.points[i])) abort();
    if (sd_data_load_csv(path, &b) != SD_OK || b.n != a.n || b.c != a.c ||
        memcmp(a.points, b.points, a.n * (size_t)a.c * sizeof(float)) != 0)
        abort();
    sd_dataset_free(&a);
    sd_dataset_free(&b);
    return 0;
}
