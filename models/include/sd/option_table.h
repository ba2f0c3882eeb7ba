/* option_table.h - one table per command describes its options: the flag,
 * the key under which a run stores it (config.json), the type, the field of
 * the options struct it fills, the accepted range, whether it is fixed for a
 * run, and the help text. Everything that handles an option is driven by the
 * table, so that an option is declared exactly once:
 *
 *   - the command-line parser and the help text (tools/cli.c:
 *     cli_parse_options, cli_print_options);
 *   - config.json's writer and reader, the range check of in-process callers
 *     and the --resume conflict check (train_opts.c, through the helpers
 *     below).
 *
 * A table is an array of sd_option; entries of type SD_OPT_TEXT are lines of
 * the help text only (headings, notes). Bit i of a `given` mask says that
 * entry i was on the command line.
 */
#ifndef SD_OPTION_TABLE_H
#define SD_OPTION_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sd_opt_type {
    SD_OPT_TEXT,   /* no option: `help` is printed as it is (a heading, a note) */
    SD_OPT_FLAG,   /* no value: stores imin into the int or bool field (size) */
    SD_OPT_INT,    /* integer in [imin, imax] into an int or int64_t field (size) */
    SD_OPT_U64,    /* unsigned 64-bit integer (a seed); stored as a JSON string, exact */
    SD_OPT_DBL,    /* double in [dmin, dmax] */
    SD_OPT_STR,    /* text copied into a char array of `size` bytes */
    SD_OPT_STRPTR, /* text: the const char * field points at the argument */
    SD_OPT_CHOICE, /* one of `choices` ("dsm|ssm"): its index into an int/enum field */
    SD_OPT_LIST,   /* "1,2,2": integers in [imin, imax] into an int array of `size`
                      bytes, their count into the int at offset `aux` */
    SD_OPT_BYTES   /* a size "4G", "512M" (sd_mem_parse_size) into a uint64_t field */
} sd_opt_type;

enum {
    SD_OPTF_FIXED = 1u << 0, /* fixed for a run: on --resume it may be repeated, not changed */
    SD_OPTF_PATH = 1u << 1,  /* a path: compared on --resume by its resolved name */
    SD_OPTF_AUTO = 1u << 2,  /* "auto" (the default) agrees with any stored value */
    SD_OPTF_ZERO = 1u << 3,  /* 0 (the default: "derive it") is accepted outside the range */
    SD_OPTF_MARK = 1u << 4   /* STR: also sets the bool at offset `aux` to true */
};

typedef struct sd_option {
    const char *flag;    /* "--lr"; NULL for SD_OPT_TEXT */
    const char *key;     /* config.json key; NULL: not stored with the run */
    sd_opt_type type;
    size_t offset, size; /* the field in the options struct */
    long long imin, imax;
    double dmin, dmax;
    unsigned flags;      /* SD_OPTF_* */
    const char *choices; /* SD_OPT_CHOICE: names separated by '|' */
    size_t aux;          /* SD_OPT_LIST: offset of the count; SD_OPTF_MARK: of the bool */
    const char *arg;     /* the value's name in the help ("X", "PATH"); NULL: none */
    const char *help;    /* lines separated by '\n' */
} sd_option;

/* Table-entry constructors: S the options struct type, f its field. */
#define SD_OPT_HEAD(text) {.type = SD_OPT_TEXT, .help = (text)}
#define SD_OPT_F(fl, S, f, value, h)                                                         \
    {.flag = (fl), .type = SD_OPT_FLAG, .offset = offsetof(S, f),                            \
     .size = sizeof(((S *)0)->f), .imin = (value), .help = (h)}
#define SD_OPT_I(fl, k, S, f, lo, hi, fla, a, h)                                             \
    {.flag = (fl), .key = (k), .type = SD_OPT_INT, .offset = offsetof(S, f),                 \
     .size = sizeof(((S *)0)->f), .imin = (lo), .imax = (hi), .flags = (fla), .arg = (a),    \
     .help = (h)}
#define SD_OPT_D(fl, k, S, f, lo, hi, fla, a, h)                                             \
    {.flag = (fl), .key = (k), .type = SD_OPT_DBL, .offset = offsetof(S, f),                 \
     .size = sizeof(double), .dmin = (lo), .dmax = (hi), .flags = (fla), .arg = (a),         \
     .help = (h)}
#define SD_OPT_S(fl, k, S, f, fla, a, h)                                                     \
    {.flag = (fl), .key = (k), .type = SD_OPT_STR, .offset = offsetof(S, f),                 \
     .size = sizeof(((S *)0)->f), .flags = (fla), .arg = (a), .help = (h)}
#define SD_OPT_P(fl, S, f, a, h)                                                             \
    {.flag = (fl), .type = SD_OPT_STRPTR, .offset = offsetof(S, f),                          \
     .size = sizeof(const char *), .arg = (a), .help = (h)}

/* The index of the entry for field `offset` (the first one), or -1. */
int sd_option_index(const sd_option *tab, size_t n, size_t offset);

/* Integer fields of 1, 4 or 8 bytes (bool, int or enum, int64_t), read and
 * written through the table's size. */
long long sd_option_get_int(const sd_option *opt, const void *base);
void sd_option_set_int(const sd_option *opt, void *base, long long v);

/* Parse `text` as the value of opt into base (not for FLAG and TEXT); false
 * with a one-line message in buf (naming the flag and the expected value). */
bool sd_option_parse(const sd_option *opt, const char *text, void *base, char *msg, size_t cap);

/* The value as text: numbers exactly (doubles by the shortest %g that reads
 * back the same), flags as on/off, choices by name, lists as "1,2,2". */
void sd_option_format(const sd_option *opt, const void *base, char *buf, size_t cap);

/* The value in [imin, imax] / [dmin, dmax] (0 too with SD_OPTF_ZERO); false
 * with a message as for sd_option_parse. */
bool sd_option_in_range(const sd_option *opt, const void *base, char *msg, size_t cap);

/* config.json: the value as a JSON item (numbers; FLAG a bool; U64, LIST,
 * CHOICE and strings a string), NULL when out of memory; and back from an
 * item, which must have that type and a value in range (false otherwise). */
struct cJSON;
struct cJSON *sd_option_to_json(const sd_option *opt, const void *base);
bool sd_option_from_json(const sd_option *opt, const struct cJSON *item, void *base);

#endif
