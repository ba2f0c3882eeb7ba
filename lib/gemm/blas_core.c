/* blas_core.c - OpenBLAS kernel choice (blas_core.h). */
#include "sd/blas_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* OpenBLAS extensions (cblas.h of openblas declares them; keep our own
 * declarations so this file does not depend on that header's variant). */
char *openblas_get_corename(void);
char *openblas_get_config(void);

const char *sd_blas_core(void) { return openblas_get_corename(); }

/* Kernel sets OpenBLAS falls back to (or that predate AVX2): when one of
 * these runs on a CPU with AVX2 or AVX-512, the detection missed it. */
static int is_generic(const char *core)
{
    static const char *const generic[] = {"Prescott", "Core2",   "Penryn",      "Dunnington",
                                          "Nehalem",  "Atom",    "Katmai",      "Coppermine",
                                          "Northwood", "Banias", "SandyBridge", "Unknown"};
    for (size_t i = 0; i < sizeof generic / sizeof *generic; i++)
        if (strcasecmp(core, generic[i]) == 0) return 1;
    return 0;
}

const char *sd_blas_better_core(void)
{
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (set && *set) return NULL;
    const char *core = sd_blas_core();
    if (!core || !is_generic(core)) return NULL;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    /* OpenBLAS's SkylakeX kernels use AVX-512 F, CD, BW, DQ and VL. */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

void sd_blas_restart_if_generic(char **argv)
{
    const char *off = getenv("SCOREDIFF_BLAS_AUTO");
    if (off && strcmp(off, "0") == 0) return;
    const char *better = sd_blas_better_core();
    if (!better || !argv || !argv[0]) return;
    if (setenv("SCOREDIFF_BLAS_DETECTED", sd_blas_core(), 1) != 0 ||
        setenv("OPENBLAS_CORETYPE", better, 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): carry on with the detected kernels. */
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("SCOREDIFF_BLAS_DETECTED");
}

void sd_blas_describe(char *buf, unsigned long size)
{
    if (!buf || size == 0) return;
    const char *config = openblas_get_config(), *detected = getenv("SCOREDIFF_BLAS_DETECTED");
    const char *set = getenv("OPENBLAS_CORETYPE"), *better = sd_blas_better_core();
    char note[160] = "";
    if (detected && *detected && set)
        snprintf(note, sizeof note, " (OPENBLAS_CORETYPE=%s set by scorediff; OpenBLAS detected %s)",
                 set, detected);
    else if (set && *set)
        snprintf(note, sizeof note, " (OPENBLAS_CORETYPE=%s)", set);
    else if (better)
        snprintf(note, sizeof note, " (generic kernels: this CPU supports %s)", better);
    /* The config string starts with "OpenBLAS <version> ": keep those words. */
    size_t words = 0;
    if (config) {
        words = strcspn(config, " ");
        if (config[words] == ' ') words += 1 + strcspn(config + words + 1, " ");
    }
    char version[64];
    snprintf(version, sizeof version, "%.*s", (int)words, config ? config : "");
    snprintf(buf, (size_t)size, "%s, core %s%s", version, sd_blas_core(), note);
}
