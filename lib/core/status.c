/* status.c - thread-local error messages and counted, checked allocation. */
#include "sd/status.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char sd_last_error[512];
static atomic_uint_fast64_t sd_allocations;

const char *sd_status_str(sd_status st)
{
    switch (st) {
    case SD_OK: return "ok";
    case SD_ERR_INVALID: return "invalid argument";
    case SD_ERR_NOMEM: return "out of memory";
    case SD_ERR_IO: return "i/o error";
    case SD_ERR_FORMAT: return "malformed input";
    case SD_ERR_NUMERIC: return "numerical failure";
    case SD_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *sd_error_message(void)
{
    return sd_last_error;
}

sd_status sd_error(sd_status st, const char *fmt, ...)
{
    /* Format into a scratch buffer first: callers often pass the previous
     * message as an argument (`sd_error(st, "%s: %s", path,
     * sd_error_message())`), and vsnprintf into the buffer it reads from is
     * undefined (C11 7.21.6.5: copying between overlapping objects). */
    char scratch[sizeof sd_last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(scratch, sizeof scratch, fmt, ap);
    va_end(ap);
    memcpy(sd_last_error, scratch, sizeof scratch);
    return st;
}

void *sd_malloc_aligned(size_t align, size_t bytes)
{
    size_t rounded = (bytes + align - 1) & ~(align - 1);
    if (rounded < bytes) {
        sd_error(SD_ERR_NOMEM, "allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    if (rounded == 0) rounded = align;
    void *p = aligned_alloc(align, rounded);
    if (!p) {
        sd_error(SD_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    atomic_fetch_add(&sd_allocations, 1);
    return p;
}

void *sd_malloc(size_t bytes)
{
    /* aligned_alloc needs a size that is a multiple of the alignment. */
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) {
        sd_error(SD_ERR_NOMEM, "allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    if (rounded == 0) rounded = 64;
    void *p = aligned_alloc(64, rounded);
    if (!p) {
        sd_error(SD_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    atomic_fetch_add(&sd_allocations, 1);
    return p;
}

void *sd_calloc(size_t count, size_t size)
{
    size_t bytes;
    if (sd_mul_size(count, size, &bytes)) {
        sd_error(SD_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    void *p = sd_malloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void sd_free(void *p)
{
    free(p);
}

uint64_t sd_alloc_count(void)
{
    return atomic_load(&sd_allocations);
}
