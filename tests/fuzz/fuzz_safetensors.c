/* fuzz_safetensors.c - libFuzzer harness for the safetensors reader.
 *
 * Built by tools/fuzz.sh with clang -fsanitize=fuzzer,address,undefined
 * together with lib/io/safetensors.c and lib/core/status.c (not through meson).
 * sd_safetensors_parse borrows the fuzzer's exactly-sized input buffer, so
 * ASan reports any read outside it. Beyond "no crash", every accepted input
 * must satisfy the reader's contract; a violation traps:
 *   - names are unique and sorted, and find() returns the same tensor;
 *   - each tensor's bytes lie inside the data section, and F32 sizes agree;
 *   - the tensors cover the data section exactly (no polyglot bytes).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sd/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sd_safetensors *st = NULL;
    if (sd_safetensors_parse(data, size, &st) != SD_OK) {
        if (st != NULL) __builtin_trap();
        return 0;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
    const uint8_t *begin = data + 8 + hlen, *end = data + size;
    size_t covered = 0;
    const sd_st_tensor *prev = NULL;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < sd_safetensors_count(st); i++) {
        const sd_st_tensor *t = sd_safetensors_at(st, i);
        if (sd_safetensors_find(st, t->name) != t) __builtin_trap();
        if (prev && strcmp(prev->name, t->name) >= 0) __builtin_trap();
        const uint8_t *p = t->data;
        if (p < begin || p > end || (size_t)(end - p) < t->nbytes) __builtin_trap();
        for (size_t k = 0; k < t->nbytes; k++) sink ^= p[k];
        if (strcmp(t->dtype, "F32") == 0) {
            if (t->nbytes != t->numel * sizeof(float)) __builtin_trap();
            float *dst = malloc(t->numel ? t->nbytes : 1);
            if (!dst) __builtin_trap();
            sd_status rc = sd_safetensors_read_f32(t, dst, t->numel);
            if (rc != SD_OK && rc != SD_ERR_NUMERIC) __builtin_trap();
            free(dst);
        }
        covered += t->nbytes;
        prev = t;
    }
    if (covered != (size_t)(end - begin)) __builtin_trap();
    (void)sd_safetensors_meta(st, "format");
    (void)sd_safetensors_meta(st, "");
    sd_safetensors_close(st);
    (void)sink;
    return 0;
}
