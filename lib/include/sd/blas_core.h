/* blas_core.h - which OpenBLAS kernels run, and a better choice when the
 * library's CPU detection falls back to generic ones.
 *
 * Debian 12's OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its kernels from the
 * CPU model number at load time. CPUs newer than the library (measured here:
 * an AVX-512 Xeon, family 6 model 207) are not in its table and get the
 * SSE3 "Prescott" kernels: sgemm runs at ~28 GFLOP/s per core instead of
 * ~115 with the SkylakeX kernels the CPU supports. The kernels can only be
 * chosen before OpenBLAS initialises, through the OPENBLAS_CORETYPE
 * environment variable, so a program fixes it by restarting itself:
 *
 *     int main(int argc, char **argv) {
 *         sd_blas_restart_if_generic(argv);   // returns if nothing to do
 *         ...
 *
 * A value the user (or the machine) already set for OPENBLAS_CORETYPE is
 * never overridden, and SCOREDIFF_BLAS_AUTO=0 turns the restart off. The
 * suggestion is only made from instruction sets the CPU reports (cpuid), so
 * the kernels it names can run here.
 */
#ifndef SD_BLAS_CORE_H
#define SD_BLAS_CORE_H

/* The kernel set OpenBLAS runs ("SkylakeX", "Haswell", "Prescott", ...). */
const char *sd_blas_core(void);

/* A kernel set better than the running one that this CPU supports, when
 * OpenBLAS fell back to a generic one and OPENBLAS_CORETYPE is unset; NULL
 * otherwise (also on non-x86 machines). */
const char *sd_blas_better_core(void);

/* If sd_blas_better_core() names one and SCOREDIFF_BLAS_AUTO is not "0",
 * re-executes this program (/proc/self/exe) with the same argv and
 * OPENBLAS_CORETYPE set to it, and SCOREDIFF_BLAS_DETECTED set to the kernel
 * set OpenBLAS had chosen. Returns only when it does not restart (nothing
 * to do, or exec failed); call it first thing in main, before threads. */
void sd_blas_restart_if_generic(char **argv);

/* One line for logs and --version: "OpenBLAS 0.3.21 ... core SkylakeX
 * (OPENBLAS_CORETYPE set by scorediff; detected Prescott)". */
void sd_blas_describe(char *buf, unsigned long size);

#endif
