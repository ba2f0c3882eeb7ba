/* safetensors.c - strict safetensors reader and crash-safe F32 writer.
 *
 * Purpose: load and save checkpoints in the safetensors format (see
 * sd/safetensors.h for the layout) without trusting a single byte of the file:
 * every rule of the reference reader (safetensors/src/tensor.rs,
 * SafeTensors::read_metadata and Metadata::validate, numbered 1-10 below) is
 * enforced up front, plus the stricter rules the spec states but the reference
 * leaves to serde (first byte '{', space-only padding, duplicate keys, plain
 * integers, string-only metadata). Non-goals: mmap, dtype conversion (only F32
 * is read as float), streaming writes of files larger than memory.
 *
 * JSON parsing uses Debian's cJSON, which is lenient in ways that matter for a
 * parser differential (it skips any byte <= 0x20 as whitespace, accepts "01",
 * "+1", "1.0", "1e3", raw control bytes in strings, and keeps duplicate keys).
 * A small lexical pre-scan (scan_header) rejects all of those before cJSON
 * sees the text, and duplicates are found after parsing by sorting names.
 */
#include "sd/safetensors.h"
#include "sd/file.h"
#include "sd/membudget.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The file is little-endian; tensor bytes are copied as they are. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

typedef struct st_kv {
    const char *key, *value;
} st_kv;

struct sd_safetensors {
    unsigned char *owned;  /* file bytes read by open(); NULL if parse() borrows */
    cJSON *json;           /* parsed header: owns every name and metadata string */
    sd_st_tensor *tensors; /* n tensors, sorted by name (strcmp) */
    size_t n;
    st_kv *meta;           /* n_meta pairs, sorted by key */
    size_t n_meta;
    char *source;          /* file name for messages, referenced by tensors */
};

/* Formats "<src>: <message>" into the thread's error message and returns st. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static sd_status st_fail(sd_status st, const char *src, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sd_error(st, "%s: %s", src, msg);
}

/* ---- dtypes (enum Dtype and bitsize() of the reference) ---- */

static const struct {
    const char *name;
    unsigned bits;
} st_dtypes[] = {
    {"BOOL", 8},     {"F4", 4},       {"F6_E2M3", 6},     {"F6_E3M2", 6},
    {"U8", 8},       {"I8", 8},       {"F8_E5M2", 8},     {"F8_E4M3", 8},
    {"F8_E8M0", 8},  {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"I16", 16},
    {"U16", 16},     {"F16", 16},     {"BF16", 16},       {"I32", 32},
    {"U32", 32},     {"F32", 32},     {"C64", 64},        {"F64", 64},
    {"I64", 64},     {"U64", 64},
};

static unsigned dtype_bits(const char *name)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(name, st_dtypes[i].name) == 0) return st_dtypes[i].bits;
    return 0;
}

/* ---- UTF-8 and the lexical pre-scan ---- */

/* Offset of the first byte that starts an invalid UTF-8 sequence, or len.
 * RFC 3629 table 3-7: no overlong forms, no surrogates, nothing above
 * U+10FFFF (lo/hi bound the first continuation byte). */
static size_t utf8_invalid_at(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t more;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) more = 1;
        else if (c == 0xE0) more = 2, lo = 0xA0;                  /* no overlong */
        else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) more = 2;
        else if (c == 0xED) more = 2, hi = 0x9F;                  /* no surrogates */
        else if (c == 0xF0) more = 3, lo = 0x90;                  /* no overlong */
        else if (c >= 0xF1 && c <= 0xF3) more = 3;
        else if (c == 0xF4) more = 3, hi = 0x8F;                  /* <= U+10FFFF */
        else return i;
        if (len - i - 1 < more || s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= more; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += more + 1;
    }
    return len;
}

enum { ST_MAX_DEPTH = 16 }; /* our schema needs 3 levels */

/* Checks the header h (n bytes, already valid UTF-8) lexically and returns in
 * *objlen the length of the leading JSON object; everything after it must be
 * ' ' padding. Rejects what strict JSON forbids but cJSON accepts: bytes other
 * than ' ', \t, \n, \r, structure, literals, strings and numbers between
 * tokens; control bytes and \u0000 inside strings (a NUL would truncate a
 * name into a duplicate); numbers that are not plain integers (fractions,
 * exponents, '+', leading zeros), since every number in a header is a count
 * or an offset. */
static sd_status scan_header(const unsigned char *h, size_t n, const char *src, size_t *objlen)
{
    if (n == 0) return st_fail(SD_ERR_FORMAT, src, "header is empty (it must be a JSON object)");
    if (h[0] != '{')
        return st_fail(SD_ERR_FORMAT, src, "header does not start with '{' (first byte 0x%02x)",
                       h[0]);
    int depth = 0;
    size_t i = 0;
    while (i < n) {
        unsigned char c = h[i];
        if (c == '"') {
            for (i++;; i++) {
                if (i >= n) return st_fail(SD_ERR_FORMAT, src, "header ends inside a string");
                c = h[i];
                if (c == '"') break;
                if (c < 0x20)
                    return st_fail(SD_ERR_FORMAT, src,
                                   "control byte 0x%02x inside a string at header offset %zu", c, i);
                if (c != '\\') continue;
                if (i + 1 >= n) return st_fail(SD_ERR_FORMAT, src, "header ends inside a string");
                if (h[i + 1] == 'u') {
                    if (n - i < 6) return st_fail(SD_ERR_FORMAT, src, "header ends inside a string");
                    if (memcmp(h + i + 2, "0000", 4) == 0)
                        return st_fail(SD_ERR_FORMAT, src,
                                       "\\u0000 (NUL) inside a string at header offset %zu", i);
                    i += 5;
                } else {
                    i += 1;
                }
            }
            i++;
        } else if (c == '{' || c == '[') {
            if (++depth > ST_MAX_DEPTH)
                return st_fail(SD_ERR_FORMAT, src, "header JSON nests deeper than %d levels",
                               ST_MAX_DEPTH);
            i++;
        } else if (c == '}' || c == ']') {
            i++;
            if (--depth == 0) break; /* end of the top-level object */
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t start = i, digits;
            if (c == '-') i++;
            digits = i;
            while (i < n && h[i] >= '0' && h[i] <= '9') i++;
            if (i == digits || (h[digits] == '0' && i - digits > 1) ||
                (i < n && (h[i] == '.' || h[i] == 'e' || h[i] == 'E' || h[i] == '+')))
                return st_fail(SD_ERR_FORMAT, src,
                               "number at header offset %zu is not a plain integer", start);
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ':' || c == ',' ||
                   (c >= 'a' && c <= 'z')) {
            i++; /* literals: cJSON checks their spelling */
        } else {
            return st_fail(SD_ERR_FORMAT, src, "unexpected byte 0x%02x at header offset %zu", c, i);
        }
    }
    if (depth != 0)
        return st_fail(SD_ERR_FORMAT, src, "header JSON object is not closed (truncated header?)");
    for (size_t k = i; k < n; k++)
        if (h[k] != ' ')
            return st_fail(SD_ERR_FORMAT, src,
                           "byte 0x%02x at header offset %zu follows the JSON object "
                           "(only spaces may pad the header)", h[k], k);
    *objlen = i;
    return SD_OK;
}

/* ---- header semantics ---- */

/* A JSON number as a non-negative integer <= max. Returns NULL if fine, else a
 * reason for the caller's message. The pre-scan guarantees integer syntax and
 * values up to 2^53 are exact in a double, so max must stay below that. */
static const char *json_uint(const cJSON *v, double max, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return "is not a number";
    double d = v->valuedouble;
    if (signbit(d)) return "is negative";
    if (!(d <= max)) return "is too large";
    if (d != floor(d)) return "is not an integer";
    *out = (uint64_t)d;
    return NULL;
}

/* Fills t and span[] (BEGIN, END) from one tensor object; rule 7-8 and the
 * schema (exactly dtype, shape, data_offsets; additionalProperties false). */
static sd_status parse_tensor(const cJSON *obj, sd_st_tensor *t, uint64_t span[2], const char *src)
{
    const char *name = obj->string;
    if (!cJSON_IsObject(obj))
        return st_fail(SD_ERR_FORMAT, src, "tensor '%s' is not an object", name);
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *f = obj->child; f; f = f->next) {
        const cJSON **slot = strcmp(f->string, "dtype") == 0          ? &dtype
                             : strcmp(f->string, "shape") == 0        ? &shape
                             : strcmp(f->string, "data_offsets") == 0 ? &offs
                                                                      : NULL;
        if (!slot) return st_fail(SD_ERR_FORMAT, src, "tensor '%s': unknown field '%s'", name, f->string);
        if (*slot)
            return st_fail(SD_ERR_FORMAT, src, "tensor '%s': duplicate field '%s'", name, f->string);
        *slot = f;
    }
    if (!dtype || !shape || !offs)
        return st_fail(SD_ERR_FORMAT, src, "tensor '%s': missing field '%s'", name,
                       !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

    unsigned bits = cJSON_IsString(dtype) ? dtype_bits(dtype->valuestring) : 0;
    if (!bits)
        return st_fail(SD_ERR_FORMAT, src, "tensor '%s': unknown dtype %s%s%s", name,
                       cJSON_IsString(dtype) ? "'" : "(not a string)",
                       cJSON_IsString(dtype) ? dtype->valuestring : "",
                       cJSON_IsString(dtype) ? "'" : "");
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype->valuestring);

    if (!cJSON_IsArray(shape))
        return st_fail(SD_ERR_FORMAT, src, "tensor '%s': shape is not an array", name);
    uint64_t numel = 1;
    t->ndim = 0;
    for (const cJSON *d = shape->child; d; d = d->next) {
        uint64_t v = 0;
        const char *why = json_uint(d, (double)SD_ST_MAX_DIM, &v);
        if (t->ndim == SD_ST_MAX_DIMS)
            return st_fail(SD_ERR_FORMAT, src, "tensor '%s': more than %d dimensions", name,
                           SD_ST_MAX_DIMS);
        if (why)
            return st_fail(SD_ERR_FORMAT, src,
                           "tensor '%s': shape entry %d %s (must be an integer in [0, 2^48))",
                           name, t->ndim, why);
        t->shape[t->ndim++] = (int64_t)v;
        /* Rule 7: nelements with checked multiply. */
        if (v != 0 && numel > UINT64_MAX / v)
            return st_fail(SD_ERR_FORMAT, src, "tensor '%s': element count of the shape overflows",
                           name);
        numel *= v;
    }
    /* Rule 7: nbits = nelements * bitsize, checked; rule 8: whole bytes. */
    if (numel > UINT64_MAX / bits || numel > SIZE_MAX)
        return st_fail(SD_ERR_FORMAT, src, "tensor '%s': bit size of the shape overflows", name);
    uint64_t nbits = numel * bits;
    if (nbits % 8 != 0)
        return st_fail(SD_ERR_FORMAT, src, "tensor '%s': %" PRIu64 " elements of %s are not a whole "
                       "number of bytes", name, numel, t->dtype);
    t->numel = (size_t)numel;
    t->nbytes = (size_t)(nbits / 8);

    /* Offsets beyond 2^53 cannot be exact in a double, and are past the end of
     * any file we accept anyway (16 GiB cap), so bound them there. */
    const cJSON *b = cJSON_IsArray(offs) ? offs->child : NULL;
    const cJSON *e = b ? b->next : NULL;
    const char *why = NULL;
    if (!b || !e || e->next) {
        why = "must be an array of 2 integers";
    } else if ((why = json_uint(b, 9007199254740992.0, &span[0])) == NULL) {
        why = json_uint(e, 9007199254740992.0, &span[1]);
    }
    if (why) return st_fail(SD_ERR_FORMAT, src, "tensor '%s': data_offsets %s", name, why);
    t->name = name;
    return SD_OK;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const sd_st_tensor *)a)->name, ((const sd_st_tensor *)b)->name);
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp(((const st_kv *)a)->key, ((const st_kv *)b)->key);
}

typedef struct st_span {
    uint64_t begin, end;
    size_t idx; /* index into tensors[] */
} st_span;

/* Sort key of rule 6: data_offsets (BEGIN, END), then name for determinism.
 * qsort has no context argument, hence the thread-local tensor table. */
static _Thread_local const sd_st_tensor *tl_cmp_tensors;

static int cmp_span(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(tl_cmp_tensors[x->idx].name, tl_cmp_tensors[y->idx].name);
}

static sd_status parse_metadata(const cJSON *m, sd_safetensors *st, const char *src)
{
    if (!cJSON_IsObject(m))
        return st_fail(SD_ERR_FORMAT, src, "__metadata__ is not an object of strings");
    size_t n = 0;
    for (const cJSON *c = m->child; c; c = c->next) n++;
    st->meta = sd_calloc(n ? n : 1, sizeof *st->meta);
    if (!st->meta) return SD_ERR_NOMEM;
    for (const cJSON *c = m->child; c; c = c->next) {
        if (!cJSON_IsString(c))
            return st_fail(SD_ERR_FORMAT, src,
                           "__metadata__ value of '%s' is not a string (values must be strings)",
                           c->string);
        st->meta[st->n_meta].key = c->string;
        st->meta[st->n_meta++].value = c->valuestring;
    }
    qsort(st->meta, n, sizeof *st->meta, cmp_kv);
    for (size_t i = 1; i < n; i++)
        if (strcmp(st->meta[i - 1].key, st->meta[i].key) == 0)
            return st_fail(SD_ERR_FORMAT, src, "duplicate __metadata__ key '%s'", st->meta[i].key);
    return SD_OK;
}

/* Rules 6, 9, 10: sorted by offsets the tensors tile [0, data_len) exactly. */
static sd_status check_layout(sd_safetensors *st, st_span *spans, uint64_t data_len,
                              const char *src)
{
    tl_cmp_tensors = st->tensors;
    qsort(spans, st->n, sizeof *spans, cmp_span);
    uint64_t pos = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < st->n; i++) {
        const st_span *s = &spans[i];
        const sd_st_tensor *t = &st->tensors[s->idx];
        if (s->end < s->begin)
            return st_fail(SD_ERR_FORMAT, src, "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                           "] end before they begin", t->name, s->begin, s->end);
        if (s->begin != pos) {
            if (!prev)
                return st_fail(SD_ERR_FORMAT, src, "tensor '%s': data_offsets begin at %" PRIu64
                               ", but the first tensor must begin at 0", t->name, s->begin);
            if (s->begin > pos)
                return st_fail(SD_ERR_FORMAT, src, "gap of %" PRIu64 " bytes between tensor '%s' "
                               "(ends at %" PRIu64 ") and tensor '%s'", s->begin - pos, prev, pos,
                               t->name);
            return st_fail(SD_ERR_FORMAT, src, "tensor '%s' (begins at %" PRIu64 ") overlaps "
                           "tensor '%s' (ends at %" PRIu64 ")", t->name, s->begin, prev, pos);
        }
        if (s->end - s->begin != t->nbytes)
            return st_fail(SD_ERR_FORMAT, src, "tensor '%s': data_offsets span %" PRIu64 " bytes, "
                           "but %s with %zu elements needs %zu", t->name, s->end - s->begin,
                           t->dtype, t->numel, t->nbytes);
        if (s->end > data_len)
            return st_fail(SD_ERR_FORMAT, src, "tensor '%s': data_offsets end %" PRIu64 " is past "
                           "the end of the %" PRIu64 "-byte data buffer (truncated file?)",
                           t->name, s->end, data_len);
        pos = s->end;
        prev = t->name;
    }
    if (pos != data_len)
        return st_fail(SD_ERR_FORMAT, src, "%" PRIu64 " bytes after the last tensor are not "
                       "covered by any tensor (trailing data, polyglot file?)", data_len - pos);
    return SD_OK;
}

/* Validates buf (len bytes) and builds the handle; src names it in messages. */
static sd_status st_build(const unsigned char *buf, size_t len, const char *src,
                          sd_safetensors **out)
{
    /* Rule 1. */
    if (len < 8)
        return st_fail(SD_ERR_FORMAT, src, "file is %zu bytes, shorter than the 8-byte header "
                       "length", len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    /* Rule 2, then rule 3 (8 + n cannot overflow once n <= 1e8). */
    if (n > SD_ST_MAX_HEADER)
        return st_fail(SD_ERR_FORMAT, src, "header length %" PRIu64 " exceeds the maximum %d", n,
                       SD_ST_MAX_HEADER);
    if (8 + n > len)
        return st_fail(SD_ERR_FORMAT, src, "the 8-byte prefix plus the header length %" PRIu64
                       " (%" PRIu64 " bytes) exceed the file size %zu", n, 8 + n, len);
    const unsigned char *h = buf + 8;
    /* Rule 4. */
    size_t bad = utf8_invalid_at(h, (size_t)n);
    if (bad != n)
        return st_fail(SD_ERR_FORMAT, src, "header is not valid UTF-8 (byte 0x%02x at header "
                       "offset %zu)", h[bad], bad);
    size_t objlen = 0;
    sd_status rc = scan_header(h, (size_t)n, src, &objlen);
    if (rc != SD_OK) return rc;

    sd_safetensors *st = sd_calloc(1, sizeof *st);
    st_span *spans = NULL;
    char *text = sd_malloc(objlen + 1);
    rc = SD_ERR_NOMEM;
    if (!st || !text || !(st->source = sd_malloc(strlen(src) + 1))) goto fail;
    strcpy(st->source, src);
    /* Rule 5. cJSON copies every string, so the NUL-terminated text is temporary. */
    memcpy(text, h, objlen);
    text[objlen] = '\0';
    const char *end = NULL;
    st->json = cJSON_ParseWithLengthOpts(text, objlen, &end, 0);
    if (!st->json || end != text + objlen || !cJSON_IsObject(st->json)) {
        rc = st_fail(SD_ERR_FORMAT, src, "header is not a valid JSON object (error near header "
                     "offset %td)", end ? end - text : (ptrdiff_t)0);
        goto fail;
    }
    sd_free(text);
    text = NULL;

    const cJSON *meta = NULL;
    size_t count = 0;
    for (const cJSON *c = st->json->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") != 0) {
            count++;
        } else if (meta) {
            rc = st_fail(SD_ERR_FORMAT, src, "duplicate key '__metadata__'");
            goto fail;
        } else {
            meta = c;
        }
    }
    if (meta && (rc = parse_metadata(meta, st, src)) != SD_OK) goto fail;
    st->tensors = sd_calloc(count ? count : 1, sizeof *st->tensors);
    spans = sd_calloc(count ? count : 1, sizeof *spans);
    rc = SD_ERR_NOMEM;
    if (!st->tensors || !spans) goto fail;
    for (const cJSON *c = st->json->child; c; c = c->next) {
        if (c == meta) continue;
        sd_st_tensor *t = &st->tensors[st->n];
        uint64_t span[2] = {0, 0};
        if ((rc = parse_tensor(c, t, span, src)) != SD_OK) goto fail;
        t->source = st->source;
        spans[st->n].begin = span[0];
        spans[st->n].end = span[1];
        st->n++;
    }
    /* Duplicate tensor names: sort by name and compare neighbours. Each
     * tensor's data temporarily points at its span so that, after the sort,
     * the span can learn the tensor's new index. */
    for (size_t i = 0; i < count; i++) st->tensors[i].data = &spans[i];
    qsort(st->tensors, count, sizeof *st->tensors, cmp_tensor_name);
    for (size_t i = 0; i < count; i++) ((st_span *)st->tensors[i].data)->idx = i;
    for (size_t i = 1; i < count; i++)
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
            rc = st_fail(SD_ERR_FORMAT, src, "duplicate tensor name '%s'", st->tensors[i].name);
            goto fail;
        }
    uint64_t data_len = (uint64_t)len - 8 - n;
    if ((rc = check_layout(st, spans, data_len, src)) != SD_OK) goto fail;
    for (size_t i = 0; i < count; i++)
        st->tensors[spans[i].idx].data = buf + 8 + n + spans[i].begin;
    sd_free(spans);
    *out = st;
    return SD_OK;
fail:
    sd_free(text);
    sd_free(spans);
    sd_safetensors_close(st);
    return rc;
}

/* ---- reader API ---- */

sd_status sd_safetensors_parse(const void *buf, size_t len, sd_safetensors **out)
{
    if (!out || (!buf && len)) return sd_error(SD_ERR_INVALID, "sd_safetensors_parse: NULL argument");
    *out = NULL;
    return st_build(buf ? buf : "", len, "<memory>", out);
}

sd_status sd_safetensors_open(const char *path, sd_safetensors **out)
{
    if (!path || !out) return sd_error(SD_ERR_INVALID, "sd_safetensors_open: NULL argument");
    *out = NULL;
    /* sd/file.h: never blocks on a FIFO, refuses anything but a regular file. */
    int fd;
    uint64_t fsize;
    sd_status rc = sd_file_open_read(path, &fd, &fsize);
    if (rc != SD_OK) return rc;
    unsigned char *buf = NULL;
    /* Check the size before allocating: the file may be anything. */
    if (fsize > SD_ST_MAX_FILE) {
        rc = st_fail(SD_ERR_FORMAT, path, "file size %" PRIu64 " exceeds the %" PRIu64
                     "-byte limit", fsize, SD_ST_MAX_FILE);
        goto done;
    }
    /* The whole file is read into memory: within the budget (sd/membudget.h). */
    if ((rc = sd_mem_check(path, fsize)) != SD_OK) goto done;
    size_t len = (size_t)fsize, got = 0;
    if (!(buf = sd_malloc(len))) {
        rc = SD_ERR_NOMEM;
        goto done;
    }
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = st_fail(SD_ERR_IO, path, "read %zu of %zu bytes: %s", got, len,
                         r < 0 ? strerror(errno) : "file shrank while reading");
            goto done;
        }
        got += (size_t)r;
    }
    if ((rc = st_build(buf, len, path, out)) == SD_OK) {
        (*out)->owned = buf;
        buf = NULL;
    }
done:
    close(fd); /* read-only: nothing to lose if close reports an error */
    sd_free(buf);
    return rc;
}

size_t sd_safetensors_count(const sd_safetensors *st)
{
    return st ? st->n : 0;
}

const sd_st_tensor *sd_safetensors_at(const sd_safetensors *st, size_t i)
{
    return st && i < st->n ? &st->tensors[i] : NULL;
}

const sd_st_tensor *sd_safetensors_find(const sd_safetensors *st, const char *name)
{
    if (!st || !name || st->n == 0) return NULL;
    sd_st_tensor key = {.name = name};
    return bsearch(&key, st->tensors, st->n, sizeof key, cmp_tensor_name);
}

size_t sd_safetensors_meta_count(const sd_safetensors *st) { return st ? st->n_meta : 0; }

bool sd_safetensors_meta_at(const sd_safetensors *st, size_t i, const char **key,
                            const char **value)
{
    if (!st || i >= st->n_meta) return false;
    if (key) *key = st->meta[i].key;
    if (value) *value = st->meta[i].value;
    return true;
}

const char *sd_safetensors_meta(const sd_safetensors *st, const char *key)
{
    if (!st || !key || st->n_meta == 0) return NULL;
    st_kv k = {.key = key};
    const st_kv *hit = bsearch(&k, st->meta, st->n_meta, sizeof k, cmp_kv);
    return hit ? hit->value : NULL;
}

sd_status sd_safetensors_read_f32(const sd_st_tensor *t, float *dst, size_t n)
{
    if (!t) return sd_error(SD_ERR_INVALID, "sd_safetensors_read_f32: NULL tensor (name not found?)");
    if (strcmp(t->dtype, "F32") != 0)
        return st_fail(SD_ERR_FORMAT, t->source, "tensor '%s' has dtype %s, expected F32", t->name,
                       t->dtype);
    if (n != t->numel)
        return st_fail(SD_ERR_INVALID, t->source, "tensor '%s' has %zu elements, the caller "
                       "expects %zu", t->name, t->numel, n);
    if (n == 0) return SD_OK;
    if (!dst) return sd_error(SD_ERR_INVALID, "sd_safetensors_read_f32: NULL destination");
    /* memcpy: the data need not be 4-byte aligned in the file. */
    memcpy(dst, t->data, n * sizeof *dst);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return st_fail(SD_ERR_NUMERIC, t->source, "tensor '%s' element %zu is %s (non-finite "
                           "values are refused)", t->name, i,
                           isnan(dst[i]) ? "NaN" : dst[i] > 0 ? "+Inf" : "-Inf");
    return SD_OK;
}

void sd_safetensors_close(sd_safetensors *st)
{
    if (!st) return;
    cJSON_Delete(st->json);
    sd_free(st->tensors);
    sd_free(st->meta);
    sd_free(st->source);
    sd_free(st->owned);
    sd_free(st);
}

/* ---- writer ---- */

/* Output buffer that only counts when p is NULL: the header is emitted twice,
 * once to size it and once to fill it, so no realloc is needed. */
typedef struct st_out {
    char *p;
    size_t len;
} st_out;

static void out_bytes(st_out *o, const char *s, size_t n)
{
    if (o->p) memcpy(o->p + o->len, s, n);
    o->len += n;
}

/* Short fixed text and numbers only (at most 95 bytes per call). */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void out_fmt(st_out *o, const char *fmt, ...)
{
    char tmp[96];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    out_bytes(o, tmp, k > 0 ? (size_t)k : 0);
}

/* A JSON string with serde_json's escapes; UTF-8 bytes pass through. */
static void out_json_string(st_out *o, const char *s)
{
    static const char short_esc[] = "btn?fr"; /* \b \t \n (0x0b has none) \f \r */
    out_bytes(o, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c >= 0x08 && *c <= 0x0d && *c != 0x0b) out_fmt(o, "\\%c", short_esc[*c - 8]);
        else if (*c < 0x20) out_fmt(o, "\\u%04x", *c);
        else if (*c == '"' || *c == '\\') out_fmt(o, "\\%c", *c);
        else out_bytes(o, (const char *)c, 1);
    }
    out_bytes(o, "\"", 1);
}

/* An entry to write and its element count. */
typedef struct st_item {
    const sd_st_entry *e;
    size_t numel;
} st_item;

/* The header JSON, before padding: items[] in name order, meta[] by key. */
static void emit_header(st_out *o, const st_item *items, size_t n, const st_kv *meta,
                        size_t n_meta)
{
    out_fmt(o, "{%s", n_meta ? "\"__metadata__\":{" : "");
    for (size_t i = 0; i < n_meta; i++) {
        out_fmt(o, "%s", i ? "," : "");
        out_json_string(o, meta[i].key);
        out_fmt(o, ":");
        out_json_string(o, meta[i].value);
    }
    out_fmt(o, "%s", n_meta ? "}" : "");
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        out_fmt(o, "%s", i || n_meta ? "," : "");
        const sd_st_entry *e = items[i].e;
        out_json_string(o, e->name);
        out_fmt(o, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) out_fmt(o, "%s%" PRId64, d ? "," : "", e->shape[d]);
        uint64_t next = off + (uint64_t)items[i].numel * sizeof(float);
        out_fmt(o, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, next);
        off = next;
    }
    out_fmt(o, "}");
}

static int cmp_item(const void *a, const void *b)
{
    return strcmp(((const st_item *)a)->e->name, ((const st_item *)b)->e->name);
}

static int utf8_ok(const char *s)
{
    size_t len = strlen(s);
    return utf8_invalid_at((const unsigned char *)s, len) == len;
}

/* Checks one entry and returns its element count in *numel. */
static sd_status check_entry(const sd_st_entry *e, const char *path, size_t *numel)
{
    if (!e->name) return st_fail(SD_ERR_INVALID, path, "tensor with a NULL name");
    if (!utf8_ok(e->name) || strcmp(e->name, "__metadata__") == 0)
        return st_fail(SD_ERR_INVALID, path, "tensor name '%s' is not valid UTF-8 or is reserved",
                       e->name);
    if (e->ndim < 0 || e->ndim > SD_ST_MAX_DIMS || (e->ndim > 0 && !e->shape))
        return st_fail(SD_ERR_INVALID, path, "tensor '%s': bad rank %d or NULL shape", e->name,
                       e->ndim);
    size_t count = 1;
    for (int d = 0; d < e->ndim; d++) {
        if (e->shape[d] < 0 || e->shape[d] > SD_ST_MAX_DIM)
            return st_fail(SD_ERR_INVALID, path, "tensor '%s': dimension %d is %" PRId64
                           " (must be in [0, 2^48))", e->name, d, e->shape[d]);
        if (sd_mul_size(count, (size_t)e->shape[d], &count))
            return st_fail(SD_ERR_INVALID, path, "tensor '%s': element count overflows", e->name);
    }
    if (count > SD_ST_MAX_FILE / sizeof(float))
        return st_fail(SD_ERR_INVALID, path, "tensor '%s' is larger than the file limit", e->name);
    if (count && !e->data) return st_fail(SD_ERR_INVALID, path, "tensor '%s' has NULL data", e->name);
    /* A diverged run must not replace the last good checkpoint with NaNs. */
    for (size_t i = 0; i < count; i++)
        if (!isfinite(e->data[i]))
            return st_fail(SD_ERR_NUMERIC, path, "tensor '%s' element %zu is not finite; refusing "
                           "to write it", e->name, i);
    *numel = count;
    return SD_OK;
}

sd_status sd_safetensors_write(const char *path, const sd_st_entry *entries, size_t n,
                               const char *const *meta_keys, const char *const *meta_values,
                               size_t n_meta)
{
    if (!path || (n && !entries) || (n_meta && (!meta_keys || !meta_values)))
        return sd_error(SD_ERR_INVALID, "sd_safetensors_write: NULL argument");
    sd_status rc = SD_OK;
    st_item *items = sd_calloc(n ? n : 1, sizeof *items);
    st_kv *meta = sd_calloc(n_meta ? n_meta : 1, sizeof *meta);
    char *header = NULL;
    rc = SD_ERR_NOMEM;
    if (!items || !meta) goto done;

    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        items[i].e = &entries[i];
        if ((rc = check_entry(&entries[i], path, &items[i].numel)) != SD_OK) goto done;
        total += (uint64_t)items[i].numel * sizeof(float);
        if (total > SD_ST_MAX_FILE) {
            rc = st_fail(SD_ERR_INVALID, path, "tensors exceed the %" PRIu64 "-byte file limit",
                         SD_ST_MAX_FILE);
            goto done;
        }
    }
    for (size_t i = 0; i < n_meta; i++) {
        meta[i].key = meta_keys[i];
        meta[i].value = meta_values[i];
        if (!meta[i].key || !meta[i].value || !utf8_ok(meta[i].key) || !utf8_ok(meta[i].value)) {
            rc = st_fail(SD_ERR_INVALID, path, "metadata entry %zu is NULL or not valid UTF-8", i);
            goto done;
        }
    }
    qsort(items, n, sizeof *items, cmp_item);
    for (size_t i = 1; i < n; i++)
        if (strcmp(items[i - 1].e->name, items[i].e->name) == 0) {
            rc = st_fail(SD_ERR_INVALID, path, "duplicate tensor name '%s'", items[i].e->name);
            goto done;
        }
    qsort(meta, n_meta, sizeof *meta, cmp_kv);
    for (size_t i = 1; i < n_meta; i++)
        if (strcmp(meta[i - 1].key, meta[i].key) == 0) {
            rc = st_fail(SD_ERR_INVALID, path, "duplicate metadata key '%s'", meta[i].key);
            goto done;
        }

    /* Header padded with spaces so that 8 + N, where the data starts, is a
     * multiple of 8 (reference `prepare`: len.next_multiple_of(N_LEN)). */
    st_out o = {NULL, 0};
    emit_header(&o, items, n, meta, n_meta);
    size_t hlen = (o.len + 7) / 8 * 8;
    if (hlen > SD_ST_MAX_HEADER) {
        rc = st_fail(SD_ERR_INVALID, path, "header of %zu bytes exceeds the maximum %d", hlen,
                     SD_ST_MAX_HEADER);
        goto done;
    }
    header = sd_malloc(8 + hlen);
    rc = SD_ERR_NOMEM;
    if (!header) goto done;
    for (int i = 0; i < 8; i++) header[i] = (char)(((uint64_t)hlen >> (8 * i)) & 0xFF);
    o.p = header + 8;
    o.len = 0;
    emit_header(&o, items, n, meta, n_meta);
    memset(header + 8 + o.len, ' ', hlen - o.len);

    /* sd/file.h: a temporary file, fsync, rename over path, directory fsync;
     * the tensors stream from the caller's buffers, one write each. */
    sd_file_writer *w;
    if ((rc = sd_file_writer_open(path, &w)) != SD_OK) goto done;
    rc = sd_file_writer_write(w, header, 8 + hlen);
    for (size_t i = 0; rc == SD_OK && i < n; i++)
        rc = sd_file_writer_write(w, items[i].e->data, items[i].numel * sizeof(float));
    if (rc == SD_OK) rc = sd_file_writer_commit(w);
    else sd_file_writer_abort(w);
done:
    sd_free(header);
    sd_free(meta);
    sd_free(items);
    return rc;
}
