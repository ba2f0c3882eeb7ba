/* version.c - the library's version at run time (sd/version.h). */
#include "sd/version.h"

const char *sd_version(void) { return SD_VERSION_STRING; }

int sd_version_number(void) { return SD_VERSION_NUMBER; }
