/* membudget.h - refuse work that cannot fit in memory before allocating it.
 *
 * A corrupt image header or an edited checkpoint config can ask for tens of
 * gigabytes; without a check the process grows until the kernel's OOM killer
 * ends it with no message. Callers that are about to make a large, input-
 * driven allocation (a data set cache, a batch, a model's parameters) first
 * estimate its size and call sd_mem_check, which compares it with
 *   - the optional budget set by sd_mem_set_budget (the CLI's --max-memory),
 *   - the memory the machine can give now: MemAvailable from /proc/meminfo,
 *     or, where that is unreadable, physical memory
 *     (sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE)),
 * and refuses with SD_ERR_NOMEM and a message naming what and the figures:
 *     "data/: the image cache needs 45.8 GiB, more than the 4.0 GiB allowed
 *      by --max-memory"
 * Each check is against one allocation, not a running total: it catches the
 * absurd requests (the point of this module), not slow growth.
 *
 * The budget is process-wide (one CLI command per process); set it before
 * starting threads. Thread-safe to read.
 */
#ifndef SD_MEMBUDGET_H
#define SD_MEMBUDGET_H

#include <stdint.h>

#include "sd/status.h"

/* 0 = no budget (only the machine's memory limits). */
void sd_mem_set_budget(uint64_t bytes);
uint64_t sd_mem_budget(void);

/* Memory the machine can provide now (bytes), 0 if unknown. */
uint64_t sd_mem_machine(void);

/* SD_OK if `bytes` fits in both limits; else SD_ERR_NOMEM with the message
 * "<what> needs X, more than the Y allowed by --max-memory" (or "... than
 * the Y this machine has available"). `what` names the file or object. */
sd_status sd_mem_check(const char *what, uint64_t bytes);

/* Parse a size such as "4G", "512M", "1.5G", "100000" (bytes): suffixes K,
 * M, G, T (powers of 1024, optional trailing "B" / "iB"). 0 on success, -1
 * on a malformed, zero or overflowing value. */
int sd_mem_parse_size(const char *s, uint64_t *out);

/* "45.8 GiB" style text of a byte count into buf. */
void sd_mem_format(uint64_t bytes, char *buf, size_t len);

#endif
