/* status.h - error reporting for every scorediff library function.
 *
 * Library code never exits or aborts on bad input. A fallible function returns
 * an sd_status (SD_OK == 0) or NULL, and records a one-line, human-readable
 * detail message in a thread-local buffer that the caller may print:
 *
 *     sd_status st = sd_something(...);
 *     if (st != SD_OK) fprintf(stderr, "error: %s\n", sd_error_message());
 *
 * The message is only meaningful right after a failure; a success does not
 * clear it. Only tools/ turns errors into process exit codes.
 *
 * Allocation: all library allocations go through sd_malloc / sd_calloc /
 * sd_free so that tests can count them (sd_alloc_count) and every failure sets
 * a message. Threading: the message buffer is per thread; the counter is
 * atomic.
 */
#ifndef SD_STATUS_H
#define SD_STATUS_H

#include <stddef.h>
#include <stdint.h>

typedef enum sd_status {
    SD_OK = 0,
    SD_ERR_INVALID,   /* bad argument: shape mismatch, out of range value */
    SD_ERR_NOMEM,     /* allocation failed or size overflow */
    SD_ERR_IO,        /* file could not be read or written */
    SD_ERR_FORMAT,    /* file contents malformed */
    SD_ERR_NUMERIC,   /* NaN / Inf or a failed factorisation */
    SD_ERR_INTERNAL   /* a library bug: please report */
} sd_status;

/* Short fixed name of a status ("invalid argument", ...). */
const char *sd_status_str(sd_status st);

/* The detail message of the last failure on this thread ("" if none). */
const char *sd_error_message(void);

/* Record a failure: formats the message (printf-style) and returns st, so that
 * code can write `return sd_error(SD_ERR_INVALID, "conv2d: ...", ...);`. */
sd_status sd_error(sd_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Checked allocation. On failure they set SD_ERR_NOMEM's message and return
 * NULL. sd_malloc(0) returns a valid unique pointer. Memory is 64-byte aligned
 * (cache line / AVX-512). sd_free(NULL) is a no-op. */
void *sd_malloc(size_t bytes);
/* As sd_malloc with a larger alignment (a power of two, >= 64). */
void *sd_malloc_aligned(size_t align, size_t bytes);
void *sd_calloc(size_t count, size_t size); /* overflow-checked */
void sd_free(void *p);

/* a * b with overflow check: returns 0 and sets *out on success, -1 on overflow. */
static inline int sd_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

/* Number of successful sd_malloc/sd_calloc calls since process start. Tests use
 * the difference between two readings to prove a loop allocates nothing. */
uint64_t sd_alloc_count(void);

#endif
