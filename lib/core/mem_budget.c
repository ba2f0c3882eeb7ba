/* mem_budget.c - see sd/membudget.h. */
#include "sd/membudget.h"

#include <ctype.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Atomic uint64_t g_budget;

void sd_mem_set_budget(uint64_t bytes) { atomic_store(&g_budget, bytes); }
uint64_t sd_mem_budget(void) { return atomic_load(&g_budget); }

/* MemAvailable (kernel's estimate of what can be allocated without
 * swapping), else physical memory. */
uint64_t sd_mem_machine(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                fclose(f);
                return (uint64_t)kb * 1024u;
            }
        }
        fclose(f);
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return (uint64_t)pages * (uint64_t)page;
    return 0;
}

void sd_mem_format(uint64_t bytes, char *buf, size_t len)
{
    static const char *const unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 6) {
        v /= 1024.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%llu bytes", (unsigned long long)bytes);
    else snprintf(buf, len, "%.1f %s", v, unit[u]);
}

sd_status sd_mem_check(const char *what, uint64_t bytes)
{
    uint64_t budget = sd_mem_budget(), machine = sd_mem_machine();
    char need[32], have[32];
    if (budget && bytes > budget) {
        sd_mem_format(bytes, need, sizeof need);
        sd_mem_format(budget, have, sizeof have);
        return sd_error(SD_ERR_NOMEM, "%s needs %s, more than the %s allowed by --max-memory",
                        what, need, have);
    }
    if (machine && bytes > machine) {
        sd_mem_format(bytes, need, sizeof need);
        sd_mem_format(machine, have, sizeof have);
        return sd_error(SD_ERR_NOMEM, "%s needs %s, more than the %s this machine has available",
                        what, need, have);
    }
    return SD_OK;
}

int sd_mem_parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s || isspace((unsigned char)*s) || *s == '-' || *s == '+') return -1;
    char *end;
    double v = strtod(s, &end);
    if (end == s || !isfinite(v) || v <= 0) return -1;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024.0; end++; break;
    case 'G': mul = 1024.0 * 1024.0 * 1024.0; end++; break;
    case 'T': mul = 1024.0 * 1024.0 * 1024.0 * 1024.0; end++; break;
    default: break;
    }
    if (mul > 1 && (*end == 'i' || *end == 'I')) end++;
    if ((*end == 'B' || *end == 'b')) end++;
    if (*end) return -1;
    v *= mul;
    if (v < 1 || v >= 18446744073709551616.0) return -1; /* 2^64 */
    *out = (uint64_t)v;
    return 0;
}
