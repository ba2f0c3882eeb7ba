/* test_tmp.h - the private temporary directory of the suites that write
 * files (one definition, shared through the gradcheck helper library that
 * every suite links):
 *
 *   tu_make_tmpdir("sd_report");   creates /tmp/sd_report_XXXXXX (asserts)
 *   tu_at("R/metrics.csv");        a path inside it (8 rotating buffers)
 *   tu_remove_tmpdir();            removes it and everything below it
 *   tu_read_all(path, &len);       a whole file, NUL-terminated (malloc'd),
 *                                  NULL if it cannot be opened; len may be NULL
 */
#ifndef SD_TEST_TMP_H
#define SD_TEST_TMP_H

#include <stddef.h>

extern char tu_tmpdir[256];

void tu_make_tmpdir(const char *prefix);
void tu_remove_tmpdir(void);
const char *tu_at(const char *name);
char *tu_read_all(const char *path, size_t *len);

#endif
