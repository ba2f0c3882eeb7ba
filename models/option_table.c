/* option_table.c - reading, writing, checking and formatting one option of a
 * table (option_table.h). */
#include "sd/option_table.h"
#include "sd/membudget.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIELD(opt, base) ((char *)(base) + (opt)->offset)
#define CFIELD(opt, base) ((const char *)(base) + (opt)->offset)

int sd_option_index(const sd_option *tab, size_t n, size_t offset)
{
    for (size_t i = 0; i < n; i++)
        if (tab[i].type != SD_OPT_TEXT && tab[i].offset == offset) return (int)i;
    return -1;
}

long long sd_option_get_int(const sd_option *opt, const void *base)
{
    const char *p = CFIELD(opt, base);
    if (opt->size == sizeof(int64_t)) {
        int64_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    if (opt->size == sizeof(int)) {
        int v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    bool b;
    memcpy(&b, p, sizeof b);
    return b;
}

void sd_option_set_int(const sd_option *opt, void *base, long long v)
{
    char *p = FIELD(opt, base);
    if (opt->size == sizeof(int64_t)) {
        int64_t x = v;
        memcpy(p, &x, sizeof x);
    } else if (opt->size == sizeof(int)) {
        int x = (int)v;
        memcpy(p, &x, sizeof x);
    } else {
        bool x = v != 0;
        memcpy(p, &x, sizeof x);
    }
}

/* The k-th name of "a|b|c" into buf; false past the last. */
static bool choice_name(const char *choices, int k, char *buf, size_t cap)
{
    const char *p = choices;
    for (int i = 0; i < k; i++) {
        p = strchr(p, '|');
        if (!p) return false;
        p++;
    }
    size_t len = strcspn(p, "|");
    snprintf(buf, cap, "%.*s", (int)len, p);
    return true;
}

static int choice_index(const char *choices, const char *s)
{
    char name[64];
    for (int k = 0; choice_name(choices, k, name, sizeof name); k++)
        if (strcmp(name, s) == 0) return k;
    return -1;
}

/* "a or b", "a, b or c" */
static void choice_list(const char *choices, char *buf, size_t cap)
{
    char name[64];
    int n = 0;
    while (choice_name(choices, n, name, sizeof name)) n++;
    size_t off = 0;
    buf[0] = '\0';
    for (int k = 0; k < n && off < cap; k++) {
        choice_name(choices, k, name, sizeof name);
        off += (size_t)snprintf(buf + off, cap - off, "%s%s", k == 0 ? "" : k == n - 1 ? " or " : ", ",
                                name);
    }
}

static bool parse_list(const sd_option *opt, const char *s, void *base)
{
    int vals[64], n = 0, max = (int)(opt->size / sizeof(int));
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < opt->imin || v > opt->imax || n >= max || n >= 64) return false;
        vals[n++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) return false;
    }
    if (n == 0) return false;
    memcpy(FIELD(opt, base), vals, (size_t)n * sizeof(int));
    memcpy((char *)base + opt->aux, &n, sizeof n);
    return true;
}

bool sd_option_parse(const sd_option *opt, const char *s, void *base, char *msg, size_t cap)
{
    char *end;
    errno = 0;
    switch (opt->type) {
    case SD_OPT_INT: {
        long long v = strtoll(s, &end, 10);
        if (end == s || *end || errno || v < opt->imin || v > opt->imax) {
            snprintf(msg, cap, "%s %s: expected an integer in [%lld, %lld]", opt->flag, s,
                     opt->imin, opt->imax);
            return false;
        }
        sd_option_set_int(opt, base, v);
        return true;
    }
    case SD_OPT_U64: {
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s || *end || errno || s[0] == '-') {
            snprintf(msg, cap, "%s %s: expected an unsigned integer", opt->flag, s);
            return false;
        }
        uint64_t x = v;
        memcpy(FIELD(opt, base), &x, sizeof x);
        return true;
    }
    case SD_OPT_DBL: {
        double v = strtod(s, &end);
        if (end == s || *end || errno || !isfinite(v) || v < opt->dmin || v > opt->dmax) {
            snprintf(msg, cap, "%s %s: expected a number in [%g, %g]", opt->flag, s, opt->dmin,
                     opt->dmax);
            return false;
        }
        memcpy(FIELD(opt, base), &v, sizeof v);
        return true;
    }
    case SD_OPT_STR:
        if (strlen(s) >= opt->size) {
            snprintf(msg, cap, "%s: value too long", opt->flag);
            return false;
        }
        memcpy(FIELD(opt, base), s, strlen(s) + 1);
        if (opt->flags & SD_OPTF_MARK) {
            bool t = true;
            memcpy((char *)base + opt->aux, &t, sizeof t);
        }
        return true;
    case SD_OPT_STRPTR:
        memcpy(FIELD(opt, base), &s, sizeof s);
        return true;
    case SD_OPT_CHOICE: {
        int k = choice_index(opt->choices, s);
        if (k < 0) {
            char list[256];
            choice_list(opt->choices, list, sizeof list);
            snprintf(msg, cap, "%s %s: expected %s", opt->flag, s, list);
            return false;
        }
        sd_option_set_int(opt, base, k);
        return true;
    }
    case SD_OPT_LIST:
        if (!parse_list(opt, s, base)) {
            snprintf(msg, cap, "%s %s: expected integers in [%lld, %lld] separated by commas, "
                     "e.g. 1,2,2", opt->flag, s, opt->imin, opt->imax);
            return false;
        }
        return true;
    case SD_OPT_BYTES: {
        uint64_t v;
        if (sd_mem_parse_size(s, &v) != 0) {
            snprintf(msg, cap, "%s %s: expected a size, e.g. 4G or 512M", opt->flag, s);
            return false;
        }
        memcpy(FIELD(opt, base), &v, sizeof v);
        return true;
    }
    case SD_OPT_FLAG:
        sd_option_set_int(opt, base, opt->imin);
        return true;
    case SD_OPT_TEXT: break;
    }
    snprintf(msg, cap, "%s: not an option with a value", opt->flag ? opt->flag : "?");
    return false;
}

/* Shortest "%.Ng" that reads back as exactly v. */
static void exact_g(char *b, size_t n, double v)
{
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(b, n, "%.*g", prec, v);
        if (strtod(b, NULL) == v) return;
    }
}

void sd_option_format(const sd_option *opt, const void *base, char *b, size_t n)
{
    const char *p = CFIELD(opt, base);
    b[0] = '\0';
    switch (opt->type) {
    case SD_OPT_INT: snprintf(b, n, "%lld", sd_option_get_int(opt, base)); break;
    case SD_OPT_FLAG: snprintf(b, n, "%s", sd_option_get_int(opt, base) ? "on" : "off"); break;
    case SD_OPT_U64:
    case SD_OPT_BYTES: {
        uint64_t v;
        memcpy(&v, p, sizeof v);
        snprintf(b, n, "%llu", (unsigned long long)v);
        break;
    }
    case SD_OPT_DBL: {
        double v;
        memcpy(&v, p, sizeof v);
        exact_g(b, n, v);
        break;
    }
    case SD_OPT_STR: snprintf(b, n, "%s", p); break;
    case SD_OPT_STRPTR: {
        const char *s;
        memcpy(&s, p, sizeof s);
        snprintf(b, n, "%s", s ? s : "");
        break;
    }
    case SD_OPT_CHOICE:
        if (!choice_name(opt->choices, (int)sd_option_get_int(opt, base), b, n)) b[0] = '\0';
        break;
    case SD_OPT_LIST: {
        int count;
        memcpy(&count, (const char *)base + opt->aux, sizeof count);
        for (int i = 0, off = 0; i < count && (size_t)off < n; i++) {
            int v;
            memcpy(&v, p + (size_t)i * sizeof(int), sizeof v);
            off += snprintf(b + off, n - (size_t)off, i ? ",%d" : "%d", v);
        }
        break;
    }
    case SD_OPT_TEXT: break;
    }
}

bool sd_option_in_range(const sd_option *opt, const void *base, char *msg, size_t cap)
{
    if (opt->type == SD_OPT_INT) {
        long long v = sd_option_get_int(opt, base);
        if ((v >= opt->imin && v <= opt->imax) || (v == 0 && (opt->flags & SD_OPTF_ZERO)))
            return true;
        snprintf(msg, cap, "%s %lld: expected an integer in [%lld, %lld]", opt->flag, v, opt->imin,
                 opt->imax);
        return false;
    }
    if (opt->type == SD_OPT_DBL) {
        double v;
        memcpy(&v, CFIELD(opt, base), sizeof v);
        if (v >= opt->dmin && v <= opt->dmax) return true;
        snprintf(msg, cap, "%s %g: expected a number in [%g, %g]", opt->flag, v, opt->dmin,
                 opt->dmax);
        return false;
    }
    return true;
}

cJSON *sd_option_to_json(const sd_option *opt, const void *base)
{
    char text[4200];
    switch (opt->type) {
    case SD_OPT_INT: return cJSON_CreateNumber((double)sd_option_get_int(opt, base));
    case SD_OPT_FLAG: return cJSON_CreateBool(sd_option_get_int(opt, base) != 0);
    case SD_OPT_DBL: {
        double v;
        memcpy(&v, CFIELD(opt, base), sizeof v);
        return cJSON_CreateNumber(v);
    }
    case SD_OPT_STR: return cJSON_CreateString(CFIELD(opt, base));
    default:
        sd_option_format(opt, base, text, sizeof text);
        return cJSON_CreateString(text);
    }
}

bool sd_option_from_json(const sd_option *opt, const cJSON *v, void *base)
{
    char msg[256];
    if (!v) return false;
    switch (opt->type) {
    case SD_OPT_INT:
    case SD_OPT_DBL: {
        if (!cJSON_IsNumber(v)) return false;
        /* the range first, on the double: no conversion of an out-of-range value */
        double d = v->valuedouble;
        double lo = opt->type == SD_OPT_INT ? (double)opt->imin : opt->dmin;
        double hi = opt->type == SD_OPT_INT ? (double)opt->imax : opt->dmax;
        if (!(d >= lo && d <= hi) && !(d == 0 && (opt->flags & SD_OPTF_ZERO))) return false;
        if (opt->type == SD_OPT_INT) sd_option_set_int(opt, base, (long long)d);
        else memcpy(FIELD(opt, base), &d, sizeof d);
        return true;
    }
    case SD_OPT_FLAG:
        if (!cJSON_IsBool(v)) return false;
        sd_option_set_int(opt, base, cJSON_IsTrue(v));
        return true;
    case SD_OPT_STR:
    case SD_OPT_U64:
    case SD_OPT_CHOICE:
    case SD_OPT_LIST: {
        if (!cJSON_IsString(v)) return false;
        if (opt->type == SD_OPT_STR) {
            if (strlen(v->valuestring) >= opt->size) return false;
            memcpy(FIELD(opt, base), v->valuestring, strlen(v->valuestring) + 1);
            return true;
        }
        return sd_option_parse(opt, v->valuestring, base, msg, sizeof msg);
    }
    default: return false;
    }
}
