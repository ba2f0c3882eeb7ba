/* test_safetensors.c - the safetensors reader and writer (safetensors.c).
 *
 * Round trips, byte-exact output against a file built by hand from the spec,
 * every validation rule with its own malformed input (each must fail with its
 * specific message and no sanitizer report), and crash safety of the writer:
 * a failed write leaves the previous file untouched and no temp file behind.
 */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sd/file.h"
#include "sd/safetensors.h"

/* ---- helpers ---- */

typedef struct blob {
    unsigned char *p;
    size_t len;
} blob;

/* A file image: u64 little-endian header length, hlen header bytes, data.
 * Exactly sized malloc, so ASan sees any read past the end. */
static blob mk_n(const char *header, size_t hlen, const void *data, size_t dlen)
{
    blob b = {malloc(8 + hlen + dlen + 1), 8 + hlen + dlen};
    ck_assert_ptr_nonnull(b.p);
    for (int i = 0; i < 8; i++) b.p[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(b.p + 8, header, hlen);
    if (dlen) memcpy(b.p + 8 + hlen, data, dlen);
    return b;
}

static blob mk(const char *header, const void *data, size_t dlen)
{
    return mk_n(header, strlen(header), data, dlen);
}

/* parse must fail with status want and a message containing needle. */
static void expect_bad_status(blob b, sd_status want, const char *needle)
{
    sd_safetensors *st = (sd_safetensors *)&b; /* must be reset to NULL */
    sd_status rc = sd_safetensors_parse(b.p, b.len, &st);
    ck_assert_msg(rc == want, "want status %d, got %d (%s) for case '%s'", want, rc,
                  sd_error_message(), needle);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(sd_error_message(), needle) != NULL, "message '%s' lacks '%s'",
                  sd_error_message(), needle);
    ck_assert_msg(strncmp(sd_error_message(), "<memory>: ", 10) == 0, "no source in '%s'",
                  sd_error_message());
    free(b.p);
}

static void expect_bad(blob b, const char *needle)
{
    expect_bad_status(b, SD_ERR_FORMAT, needle);
}

static sd_safetensors *expect_ok(blob b)
{
    sd_safetensors *st = NULL;
    sd_status rc = sd_safetensors_parse(b.p, b.len, &st);
    ck_assert_msg(rc == SD_OK, "unexpected failure: %s", sd_error_message());
    ck_assert_ptr_nonnull(st);
    return st;
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd_st_test_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

/* Removes every file in tmpdir and the directory itself. */
static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        if (remove(p) != 0) rmdir(p);
    }
    closedir(d);
    ck_assert_int_eq(rmdir(tmpdir), 0);
}

static int count_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static blob read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    ck_assert_int_ge(n, 0);
    rewind(f);
    blob b = {malloc((size_t)n + 1), (size_t)n};
    ck_assert_uint_eq(fread(b.p, 1, b.len, f), b.len);
    fclose(f);
    return b;
}

/* ---- round trips ---- */

START_TEST(test_round_trip)
{
    make_tmpdir();
    char path[128];
    snprintf(path, sizeof path, "%s/ckpt.safetensors", tmpdir);

    float scalar = 3.25f, conv[2 * 3 * 1 * 2], vec[5];
    for (int i = 0; i < 12; i++) conv[i] = (float)i * 0.37f - 2.0f;
    for (int i = 0; i < 5; i++) vec[i] = (float)(1 << i) * 1e-3f;
    int64_t conv_shape[4] = {2, 3, 1, 2}, vec_shape[1] = {5}, empty_shape[2] = {0, 4};
    /* Deliberately out of name order: the writer sorts. */
    sd_st_entry e[4] = {
        {"model.vec", 1, vec_shape, vec},
        {"model.conv.weight", 4, conv_shape, conv},
        {"ema.scalar", 0, NULL, &scalar},
        {"model.empty", 2, empty_shape, NULL},
    };
    const char *keys[3] = {"step", "format", "model_config"};
    const char *vals[3] = {"42", "sd-ckpt", "{\"ch\": 32, \"name\": \"unet \\\"28\\\"\\n\"}"};
    ck_assert_int_eq(sd_safetensors_write(path, e, 4, keys, vals, 3), SD_OK);
    ck_assert_int_eq(count_temp_files(tmpdir), 0);

    /* Header padded to a multiple of 8, so the data is 8-byte aligned. */
    blob raw = read_all(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | raw.p[i];
    ck_assert_uint_eq(n % 8, 0);
    ck_assert_uint_eq(raw.len, 8 + n + (12 + 5 + 1) * 4);
    size_t j = 8 + n;
    while (raw.p[j - 1] == ' ') j--;
    ck_assert_int_eq(raw.p[j - 1], '}'); /* JSON, then fewer than 8 spaces */
    ck_assert_uint_lt(8 + n - j, 8);
    free(raw.p);

    sd_safetensors *st = NULL;
    ck_assert_int_eq(sd_safetensors_open(path, &st), SD_OK);
    ck_assert_uint_eq(sd_safetensors_count(st), 4);
    const char *order[4] = {"ema.scalar", "model.conv.weight", "model.empty", "model.vec"};
    for (size_t i = 0; i < 4; i++) ck_assert_str_eq(sd_safetensors_at(st, i)->name, order[i]);
    ck_assert_ptr_null(sd_safetensors_at(st, 4));

    const sd_st_tensor *t = sd_safetensors_find(st, "ema.scalar");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->numel, 1);
    ck_assert_str_eq(t->dtype, "F32");
    float got[12];
    ck_assert_int_eq(sd_safetensors_read_f32(t, got, 1), SD_OK);
    ck_assert(got[0] == 3.25f);

    t = sd_safetensors_find(st, "model.conv.weight");
    ck_assert_int_eq(t->ndim, 4);
    for (int d = 0; d < 4; d++) ck_assert_int_eq(t->shape[d], conv_shape[d]);
    ck_assert_uint_eq(t->nbytes, 48);
    ck_assert_int_eq(sd_safetensors_read_f32(t, got, 12), SD_OK);
    ck_assert(memcmp(got, conv, sizeof conv) == 0);

    t = sd_safetensors_find(st, "model.vec");
    ck_assert_int_eq(sd_safetensors_read_f32(t, got, 5), SD_OK);
    ck_assert(memcmp(got, vec, sizeof vec) == 0);

    t = sd_safetensors_find(st, "model.empty");
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 0);
    ck_assert_int_eq(t->shape[1], 4);
    ck_assert_uint_eq(t->nbytes, 0);
    ck_assert_int_eq(sd_safetensors_read_f32(t, NULL, 0), SD_OK);

    ck_assert_ptr_null(sd_safetensors_find(st, "model"));
    ck_assert_ptr_null(sd_safetensors_find(st, "model.vec2"));
    ck_assert_str_eq(sd_safetensors_meta(st, "step"), "42");
    ck_assert_str_eq(sd_safetensors_meta(st, "format"), "sd-ckpt");
    ck_assert_str_eq(sd_safetensors_meta(st, "model_config"), vals[2]);
    ck_assert_ptr_null(sd_safetensors_meta(st, "missing"));

    /* read_f32 argument checks. */
    ck_assert_int_eq(sd_safetensors_read_f32(t, got, 3), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "model.empty"));
    ck_assert_int_eq(sd_safetensors_read_f32(NULL, got, 1), SD_ERR_INVALID);
    sd_safetensors_close(st);

    /* Overwriting replaces the file atomically; zero tensors and no metadata
     * give the smallest valid file. */
    ck_assert_int_eq(sd_safetensors_write(path, NULL, 0, NULL, NULL, 0), SD_OK);
    raw = read_all(path);
    ck_assert_uint_eq(raw.len, 16);
    ck_assert(memcmp(raw.p, "\x08\0\0\0\0\0\0\0{}      ", 16) == 0);
    free(raw.p);
    ck_assert_int_eq(sd_safetensors_open(path, &st), SD_OK);
    ck_assert_uint_eq(sd_safetensors_count(st), 0);
    ck_assert_ptr_null(sd_safetensors_find(st, "x"));
    ck_assert_ptr_null(sd_safetensors_meta(st, "x"));
    sd_safetensors_close(st);
    remove_tmpdir();
}
END_TEST

/* The writer's bytes equal a file assembled by hand from the spec: header JSON
 * (tensors in name order, compact), spaces to a multiple of 8, LE floats. */
START_TEST(test_exact_bytes)
{
    make_tmpdir();
    char path[128];
    snprintf(path, sizeof path, "%s/tiny.safetensors", tmpdir);
    float w[2] = {1.0f, -2.0f}, b = 0.5f;
    int64_t wshape[1] = {2};
    sd_st_entry e[2] = {{"w", 1, wshape, w}, {"b", 0, NULL, &b}};
    const char *k[1] = {"k"}, *v[1] = {"v\t\"q\""};
    ck_assert_int_eq(sd_safetensors_write(path, e, 2, k, v, 1), SD_OK);

    const char *json = "{\"__metadata__\":{\"k\":\"v\\t\\\"q\\\"\"},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                       "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
    size_t jl = strlen(json), hl = (jl + 7) / 8 * 8;
    unsigned char want[512];
    size_t len = 0;
    for (int i = 0; i < 8; i++) want[len++] = (unsigned char)(hl >> (8 * i));
    memcpy(want + len, json, jl);
    len += jl;
    while (len < 8 + hl) want[len++] = ' ';
    /* IEEE-754 binary32, little-endian: 0.5 = 0x3F000000, 1.0 = 0x3F800000,
     * -2.0 = 0xC0000000. */
    static const unsigned char data[12] = {0, 0, 0, 0x3F, 0, 0, 0x80, 0x3F, 0, 0, 0, 0xC0};
    memcpy(want + len, data, 12);
    len += 12;

    blob got = read_all(path);
    ck_assert_uint_eq(got.len, len);
    ck_assert(memcmp(got.p, want, len) == 0);
    free(got.p);
    remove_tmpdir();
}
END_TEST

/* Another writer need not pad: data at an odd offset is still read. */
START_TEST(test_unaligned_and_dtypes)
{
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                    "\"h\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[12,14]},"
                    "\"q\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[14,15]},"
                    "\"z\":{\"dtype\":\"BF16\",\"shape\":[0,7],\"data_offsets\":[15,15]},"
                    "\"z2\":{\"dtype\":\"I64\",\"shape\":[3,0],\"data_offsets\":[15,15]},"
                    "\"\xc3\xa9\xf0\x9f\x98\x80\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[15,16]}}";
    ck_assert_uint_ne(strlen(h) % 4, 0);
    unsigned char d[16] = {0};
    float vals[3] = {1.5f, -0.25f, 1e30f};
    memcpy(d, vals, 12);
    blob b = mk(h, d, 16);
    sd_safetensors *st = expect_ok(b);
    ck_assert_uint_eq(sd_safetensors_count(st), 6);
    float got[3];
    const sd_st_tensor *a = sd_safetensors_find(st, "a");
    ck_assert_int_eq(sd_safetensors_read_f32(a, got, 3), SD_OK);
    ck_assert(memcmp(got, vals, 12) == 0);
    ck_assert_int_eq(sd_safetensors_read_f32(sd_safetensors_find(st, "h"), got, 1), SD_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "'h' has dtype F16"));
    ck_assert_uint_eq(sd_safetensors_find(st, "q")->nbytes, 1);
    ck_assert_uint_eq(sd_safetensors_find(st, "z")->numel, 0);
    ck_assert_ptr_nonnull(sd_safetensors_find(st, "\xc3\xa9\xf0\x9f\x98\x80"));
    sd_safetensors_close(st);
    free(b.p);
}
END_TEST

/* NaN and Inf pass validation (values are not the format's business) but
 * read_f32 refuses them, naming the tensor and the element. */
START_TEST(test_non_finite)
{
    const char *h = "{\"bad\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"inf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
    float d[3] = {1.0f, NAN, -INFINITY};
    blob b = mk(h, d, 12);
    sd_safetensors *st = expect_ok(b);
    float got[2];
    ck_assert_int_eq(sd_safetensors_read_f32(sd_safetensors_find(st, "bad"), got, 2), SD_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "tensor 'bad' element 1 is NaN"));
    ck_assert_int_eq(sd_safetensors_read_f32(sd_safetensors_find(st, "inf"), got, 1), SD_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "-Inf"));
    sd_safetensors_close(st);
    free(b.p);
}
END_TEST

/* ---- malformed files: rules 1-3 and truncation ---- */

#define T1 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"

START_TEST(test_lengths)
{
    for (size_t n = 0; n < 8; n++) {
        blob b = {malloc(8), n};
        memset(b.p, 0, 8);
        expect_bad(b, "shorter than the 8-byte header length");
    }
    float d[2] = {1, 2};
    ck_assert_uint_eq(strlen(T1), 54); /* file size 8 + 54 + 8 = 70 below */
    blob b = mk(T1, d, 8);
    uint64_t too_big = 4096;
    memcpy(b.p, &too_big, 8);
    expect_bad(b, "8-byte prefix plus the header length 4096 (4104 bytes) exceed the file size 70");
    /* A header length below the file size that still does not fit with
     * the prefix: the message must not read "65 exceeds 70" (issue 12). */
    b = mk(T1, d, 8);
    uint64_t near = 65;
    memcpy(b.p, &near, 8);
    expect_bad(b, "8-byte prefix plus the header length 65 (73 bytes) exceed the file size 70");

    b = mk(T1, d, 8);
    uint64_t huge = 123456789012ull;
    memcpy(b.p, &huge, 8);
    expect_bad(b, "header length 123456789012 exceeds the maximum 100000000");
    b = mk(T1, d, 8);
    memset(b.p, 0xFF, 8);
    expect_bad(b, "header length 18446744073709551615 exceeds the maximum");
    b = mk(T1, d, 8);
    uint64_t just_over = 100000001;
    memcpy(b.p, &just_over, 8);
    expect_bad(b, "exceeds the maximum 100000000");
}
END_TEST

/* Cutting a valid file anywhere must fail cleanly with the right rule. */
START_TEST(test_truncation)
{
    float d[2] = {1, 2};
    blob full = mk(T1, d, 8);
    size_t hl = strlen(T1);
    for (size_t cut = 0; cut < full.len; cut++) {
        blob b = {malloc(cut ? cut : 1), cut};
        memcpy(b.p, full.p, cut);
        if (cut < 8) expect_bad(b, "shorter than the 8-byte");
        else if (cut < 8 + hl) expect_bad(b, "exceed the file size");
        else expect_bad(b, "past the end of the");
    }
    sd_safetensors *st = expect_ok(full);
    sd_safetensors_close(st);
    free(full.p);
}
END_TEST

/* ---- header text: rules 4-5 and the stricter spec rules ---- */

START_TEST(test_header_text)
{
    float d[2] = {1, 2};
    /* Rule 4: invalid UTF-8 anywhere in the header (names and padding). */
    expect_bad(mk("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8),
               "not valid UTF-8 (byte 0xff at header offset 3)");
    expect_bad(mk("{\"\xc0\xaf\":1}", NULL, 0), "not valid UTF-8");         /* overlong '/' */
    expect_bad(mk("{\"\xed\xa0\x80\":1}", NULL, 0), "not valid UTF-8");     /* surrogate */
    expect_bad(mk("{\"\xf4\x90\x80\x80\":1}", NULL, 0), "not valid UTF-8"); /* > U+10FFFF */
    expect_bad(mk("{\"a\":1}  \xe2\x82", NULL, 0), "not valid UTF-8");      /* cut sequence */
    /* First byte must be '{'; only spaces may follow the object. */
    expect_bad(mk(" " T1, d, 8), "does not start with '{' (first byte 0x20)");
    expect_bad(mk("[" T1 "]", d, 8), "does not start with '{'");
    expect_bad(mk("\xef\xbb\xbf" T1, d, 8), "does not start with '{' (first byte 0xef)");
    expect_bad(mk("", NULL, 0), "header is empty");
    expect_bad(mk(T1 "\n", d, 8), "byte 0x0a at header offset 54 follows the JSON object");
    expect_bad(mk(T1 "  x", d, 8), "only spaces may pad");
    expect_bad(mk(T1 "{}", d, 8), "only spaces may pad");
    expect_bad(mk_n(T1 "\0", strlen(T1) + 1, d, 8), "only spaces may pad");
    /* Rule 5 and the lexical pre-scan. */
    expect_bad(mk("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", d, 8),
               "not closed");
    expect_bad(mk("{\"a\" 1}", NULL, 0), "not a valid JSON object");
    expect_bad(mk("{\"a\":tru}", NULL, 0), "not a valid JSON object");
    expect_bad(mk("{\"a\":1,}", NULL, 0), "not a valid JSON object");
    expect_bad(mk("{\"a\":[1}}", NULL, 0), "not a valid JSON object");
    expect_bad(mk("{\"a\":[1}", NULL, 0), "not closed");
    expect_bad(mk("{\"a\x01\":1}", NULL, 0), "control byte 0x01 inside a string");
    expect_bad(mk("{\x01\"a\":1}", NULL, 0), "unexpected byte 0x01 at header offset 1");
    expect_bad(mk("{\"a\\u0000b\":1}", NULL, 0), "\\u0000 (NUL) inside a string");
    expect_bad(mk("{\"a\\", NULL, 0), "header ends inside a string");
    expect_bad(mk("{\"a", NULL, 0), "header ends inside a string");
    expect_bad(mk("{\"a\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}", NULL, 0), "nests deeper");
    /* Whitespace between tokens and escapes are fine. */
    blob b = mk("{ \"a\\u00e9\\n\" :\t{\"dtype\":\"F32\",\r\n\"shape\":[ 2 ],"
                "\"data_offsets\":[0,8]}}   ", d, 8);
    sd_safetensors *st = expect_ok(b);
    ck_assert_ptr_nonnull(sd_safetensors_find(st, "a\xc3\xa9\n"));
    sd_safetensors_close(st);
    free(b.p);
}
END_TEST

/* ---- keys, fields, shapes: rules 7-8 and the schema ---- */

#define TENSOR(name, dtype, shape, b, e)                                                        \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

START_TEST(test_keys_and_fields)
{
    float d[4] = {1, 2, 3, 4};
    expect_bad(mk("{" TENSOR("a", "F32", "[1]", 0, 4) "," TENSOR("a", "F32", "[1]", 4, 8) "}", d, 8),
               "duplicate tensor name 'a'");
    expect_bad(mk("{\"__metadata__\":{},\"__metadata__\":{}}", NULL, 0),
               "duplicate key '__metadata__'");
    expect_bad(mk("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", NULL, 0),
               "duplicate __metadata__ key 'k'");
    expect_bad(mk("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                  d, 4), "tensor 'a': duplicate field 'dtype'");
    expect_bad(mk("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", d, 4),
               "tensor 'a': unknown field 'extra'");
    expect_bad(mk("{\"a\":{\"DTYPE\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", d, 4),
               "unknown field 'DTYPE'");
    expect_bad(mk("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", d, 4),
               "tensor 'a': missing field 'shape'");
    expect_bad(mk("{\"a\":[1]}", NULL, 0), "tensor 'a' is not an object");
    expect_bad(mk("{" TENSOR("a", "F128", "[1]", 0, 4) "}", d, 4), "tensor 'a': unknown dtype 'F128'");
    expect_bad(mk("{" TENSOR("a", "f32", "[1]", 0, 4) "}", d, 4), "unknown dtype 'f32'");
    expect_bad(mk("{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", d, 4),
               "unknown dtype (not a string)");
    /* Metadata must map strings to strings. */
    expect_bad(mk("{\"__metadata__\":{\"step\":42}}", NULL, 0),
               "__metadata__ value of 'step' is not a string");
    expect_bad(mk("{\"__metadata__\":{\"cfg\":{\"a\":\"b\"}}}", NULL, 0), "is not a string");
    expect_bad(mk("{\"__metadata__\":[\"a\"]}", NULL, 0), "__metadata__ is not an object");
    expect_bad(mk("{\"__metadata__\":null}", NULL, 0), "__metadata__ is not an object");
}
END_TEST

START_TEST(test_shapes)
{
    float d[4] = {1, 2, 3, 4};
    expect_bad(mk("{" TENSOR("a", "F32", "[-1]", 0, 4) "}", d, 4), "shape entry 0 is negative");
    expect_bad(mk("{" TENSOR("a", "F32", "[-0]", 0, 0) "}", NULL, 0), "shape entry 0 is negative");
    expect_bad(mk("{" TENSOR("a", "F32", "[1,2.0]", 0, 8) "}", d, 8), "not a plain integer");
    expect_bad(mk("{" TENSOR("a", "F32", "[2e0]", 0, 8) "}", d, 8), "not a plain integer");
    expect_bad(mk("{" TENSOR("a", "F32", "[02]", 0, 8) "}", d, 8), "not a plain integer");
    expect_bad(mk("{" TENSOR("a", "F32", "[+2]", 0, 8) "}", d, 8), "unexpected byte 0x2b");
    expect_bad(mk("{" TENSOR("a", "F32", "[\"2\"]", 0, 8) "}", d, 8), "shape entry 0 is not a number");
    expect_bad(mk("{" TENSOR("a", "F32", "[1,281474976710656]", 0, 4) "}", d, 4),
               "shape entry 1 is too large");
    expect_bad(mk("{" TENSOR("a", "F32", "[99999999999999999999999]", 0, 4) "}", d, 4),
               "is too large");
    expect_bad(mk("{" TENSOR("a", "F32", "2", 0, 4) "}", d, 4), "shape is not an array");
    expect_bad(mk("{" TENSOR("a", "F32", "[1,1,1,1,1,1,1,1,1]", 0, 4) "}", d, 4),
               "more than 8 dimensions");
    /* Rule 7: checked products. 2^47 * 2^47 overflows the element count;
     * 2^31 * 2^31 elements fit in 64 bits but 2^62 * 32 bits do not. */
    expect_bad(mk("{" TENSOR("a", "F32", "[140737488355328,140737488355328]", 0, 0) "}", NULL, 0),
               "tensor 'a': element count of the shape overflows");
    expect_bad(mk("{" TENSOR("a", "F32", "[2147483648,2147483648]", 0, 0) "}", NULL, 0),
               "tensor 'a': bit size of the shape overflows");
    /* Rule 8: 3 x 4 bits is not whole bytes. */
    expect_bad(mk("{" TENSOR("a", "F4", "[3]", 0, 2) "}", d, 2), "not a whole number of bytes");
    /* Rule 9: span vs shape. */
    expect_bad(mk("{" TENSOR("a", "F32", "[3]", 0, 8) "}", d, 8),
               "tensor 'a': data_offsets span 8 bytes, but F32 with 3 elements needs 12");
    /* data_offsets must be exactly two plain non-negative integers. */
    expect_bad(mk("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", d, 4),
               "data_offsets must be an array of 2 integers");
    expect_bad(mk("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", d, 8),
               "data_offsets must be an array of 2 integers");
    expect_bad(mk("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", d, 4),
               "data_offsets must be an array of 2 integers");
    expect_bad(mk("{" TENSOR("a", "F32", "[1]", -4, 0) "}", d, 4), "data_offsets is negative");
}
END_TEST

/* ---- the byte buffer: rules 6, 9, 10 ---- */

START_TEST(test_offsets)
{
    float d[8] = {0};
    expect_bad(mk("{" TENSOR("a", "F32", "[2]", 0, 8) "}", d, 4),
               "tensor 'a': data_offsets end 8 is past the end of the 4-byte data buffer");
    expect_bad(mk("{" TENSOR("a", "F32", "[1]", 0, 4) "," TENSOR("b", "F32", "[1]", 9007199254740992, 9007199254740996) "}", d, 4),
               "data_offsets is too large");
    expect_bad(mk("{" TENSOR("a", "F32", "[1]", 0, 4) "," TENSOR("b", "F32", "[1]", 8, 12) "}", d, 12),
               "gap of 4 bytes between tensor 'a' (ends at 4) and tensor 'b'");
    expect_bad(mk("{" TENSOR("a", "F32", "[2]", 0, 8) "," TENSOR("b", "F32", "[2]", 4, 12) "}", d, 12),
               "tensor 'b' (begins at 4) overlaps tensor 'a' (ends at 8)");
    expect_bad(mk("{" TENSOR("b", "F32", "[2]", 0, 8) "," TENSOR("a", "F32", "[2]", 0, 8) "}", d, 8),
               "tensor 'b' (begins at 0) overlaps tensor 'a' (ends at 8)");
    expect_bad(mk("{" TENSOR("a", "F32", "[1]", 4, 8) "}", d, 8),
               "tensor 'a': data_offsets begin at 4, but the first tensor must begin at 0");
    expect_bad(mk("{" TENSOR("a", "F32", "[1]", 0, 4) "," TENSOR("b", "F32", "[1]", 4, 0) "}", d, 4),
               "tensor 'b': data_offsets [4, 0] end before they begin");
    /* Rule 10: every byte after the header belongs to a tensor. */
    const char *poly = "extra_bogus_data_for_polyglot_file";
    unsigned char buf[64];
    memcpy(buf, d, 8);
    memcpy(buf + 8, poly, strlen(poly));
    expect_bad(mk("{" TENSOR("a", "F32", "[2]", 0, 8) "}", buf, 8 + strlen(poly)),
               "34 bytes after the last tensor are not covered by any tensor");
    expect_bad(mk("{}", poly, 3), "3 bytes after the last tensor");
    /* Zero-byte tensors may share an offset; order in the header is free. */
    blob b = mk("{" TENSOR("c", "F32", "[2]", 4, 12) "," TENSOR("z", "F32", "[0]", 4, 4) ","
                TENSOR("y", "F32", "[0]", 0, 0) "," TENSOR("a", "F32", "[1]", 0, 4) "}", d, 12);
    sd_safetensors *st = expect_ok(b);
    ck_assert_uint_eq(sd_safetensors_count(st), 4);
    const unsigned char *base = sd_safetensors_find(st, "a")->data;
    ck_assert_ptr_eq(sd_safetensors_find(st, "c")->data, base + 4);
    ck_assert_ptr_eq(sd_safetensors_find(st, "z")->data, base + 4);
    ck_assert_ptr_eq(base, b.p + b.len - 12);
    sd_safetensors_close(st);
    free(b.p);
}
END_TEST

/* ---- sd_safetensors_open: I/O errors name the file ---- */

START_TEST(test_open_errors)
{
    make_tmpdir();
    char path[128];
    sd_safetensors *st = NULL;
    snprintf(path, sizeof path, "%s/missing.safetensors", tmpdir);
    ck_assert_int_eq(sd_safetensors_open(path, &st), SD_ERR_IO);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "missing.safetensors: cannot open"));
    ck_assert_int_eq(sd_safetensors_open(tmpdir, &st), SD_ERR_IO);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "not a regular file"));
    ck_assert_ptr_null(st);

    snprintf(path, sizeof path, "%s/bad.safetensors", tmpdir);
    float d[3] = {0};
    blob b = mk("{" TENSOR("a", "F32", "[3]", 0, 12) "}", d, 8);
    FILE *f = fopen(path, "wb");
    ck_assert_uint_eq(fwrite(b.p, 1, b.len, f), b.len);
    ck_assert_int_eq(fclose(f), 0);
    free(b.p);
    ck_assert_int_eq(sd_safetensors_open(path, &st), SD_ERR_FORMAT);
    ck_assert_ptr_null(st);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "bad.safetensors: tensor 'a': data_offsets end 12 is "
                                                     "past the end of the 8-byte data buffer"));
    ck_assert_int_eq(sd_safetensors_open(NULL, &st), SD_ERR_INVALID);
    ck_assert_int_eq(sd_safetensors_parse(NULL, 0, &st), SD_ERR_FORMAT);
    remove_tmpdir();
}
END_TEST

/* ---- writer argument errors and crash safety ---- */

START_TEST(test_write_errors)
{
    make_tmpdir();
    char path[128];
    snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
    float v[2] = {1, NAN};
    int64_t s1[1] = {1}, s2[1] = {2}, neg[1] = {-1};
    sd_st_entry dup[2] = {{"x", 1, s1, v}, {"x", 1, s1, v}};
    ck_assert_int_eq(sd_safetensors_write(path, dup, 2, NULL, NULL, 0), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "duplicate tensor name 'x'"));
    sd_st_entry nan[1] = {{"x", 1, s2, v}};
    ck_assert_int_eq(sd_safetensors_write(path, nan, 1, NULL, NULL, 0), SD_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "tensor 'x' element 1 is not finite"));
    sd_st_entry bad[5] = {{"__metadata__", 1, s1, v}, {"x", 1, neg, v}, {"x", 9, s1, v},
                          {"x", 1, s1, NULL}, {NULL, 1, s1, v}};
    for (int i = 0; i < 5; i++) {
        sd_st_entry two[2] = {{"a", 1, s1, v}, bad[i]}; /* sorting must not see a NULL name */
        ck_assert_int_eq(sd_safetensors_write(path, two, 2, NULL, NULL, 0), SD_ERR_INVALID);
    }
    sd_st_entry badname[1] = {{"a\xff", 1, s1, v}};
    ck_assert_int_eq(sd_safetensors_write(path, badname, 1, NULL, NULL, 0), SD_ERR_INVALID);
    const char *k[2] = {"k", "k"}, *val[2] = {"1", "2"};
    ck_assert_int_eq(sd_safetensors_write(path, NULL, 0, k, val, 2), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "duplicate metadata key 'k'"));
    ck_assert_int_eq(access(path, F_OK), -1); /* nothing was created */
    ck_assert_int_eq(count_temp_files(tmpdir), 0);
    remove_tmpdir();
}
END_TEST

static int fail_at(void *ctx, sd_file_stage stage, const char *path, uint64_t bytes)
{
    (void)path;
    (void)bytes;
    return (int)stage == *(const int *)ctx;
}

START_TEST(test_crash_safety)
{
    make_tmpdir();
    char path[128], sub[128], bad[160];
    snprintf(path, sizeof path, "%s/ckpt.safetensors", tmpdir);
    float good = 7.0f;
    sd_st_entry e1[1] = {{"w", 0, NULL, &good}};
    ck_assert_int_eq(sd_safetensors_write(path, e1, 1, NULL, NULL, 0), SD_OK);
    blob before = read_all(path);

    enum { BIG = 1 << 16 };
    float *big = calloc(BIG, sizeof *big);
    int64_t bshape[1] = {BIG};
    sd_st_entry e2[1] = {{"w", 1, bshape, big}};

    /* 1. The file size limit is hit mid-write (EFBIG from fwrite/fflush). */
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    sd_status rc = sd_safetensors_write(path, e2, 1, NULL, NULL, 0);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    ck_assert_int_eq(rc, SD_ERR_IO);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "writing"));

    /* 2. The destination directory does not exist. */
    snprintf(bad, sizeof bad, "%s/no/such/dir/ckpt.safetensors", tmpdir);
    ck_assert_int_eq(sd_safetensors_write(bad, e2, 1, NULL, NULL, 0), SD_ERR_IO);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "cannot create temporary file"));

    /* 3. path is a directory: the rename fails after a full write. */
    snprintf(sub, sizeof sub, "%s/adir", tmpdir);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    ck_assert_int_eq(sd_safetensors_write(sub, e2, 1, NULL, NULL, 0), SD_ERR_IO);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "cannot rename"));
    struct stat sb;
    ck_assert_int_eq(stat(sub, &sb), 0);
    ck_assert(S_ISDIR(sb.st_mode));

    /* 4. The directory is read-only. Root ignores permissions, so as root
     * the write runs in a child that has dropped to uid/gid 65534. */
    ck_assert_int_eq(chmod(tmpdir, 0555), 0);
    if (geteuid() != 0) {
        ck_assert_int_eq(sd_safetensors_write(path, e2, 1, NULL, NULL, 0), SD_ERR_IO);
    } else {
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) { /* no ck_assert here: the exit code is the verdict */
            if (setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
            _exit(sd_safetensors_write(path, e2, 1, NULL, NULL, 0) == SD_ERR_IO ? 0 : 1);
        }
        int status = 0;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "read-only directory as uid 65534: child exit %d (1: write did not fail, "
                      "2: could not drop privileges)", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    ck_assert_int_eq(chmod(tmpdir, 0755), 0);

    /* 5. fsync, close or rename reports an error (sd/file.h's fault hook, as
     * a full disk or an NFS server would at those points). */
    for (int stage = SD_FILE_STAGE_WRITTEN; stage <= SD_FILE_STAGE_SYNCED; stage++) {
        sd_file_set_fault_hook(fail_at, &stage, 0);
        rc = sd_safetensors_write(path, e2, 1, NULL, NULL, 0);
        sd_file_set_fault_hook(NULL, NULL, 0);
        ck_assert_int_eq(rc, SD_ERR_IO);
        ck_assert_ptr_nonnull(strstr(sd_error_message(), path));
    }

    /* The previous checkpoint is intact, byte for byte, and still loads. */
    ck_assert_int_eq(count_temp_files(tmpdir), 0);
    blob after = read_all(path);
    ck_assert_uint_eq(after.len, before.len);
    ck_assert(memcmp(after.p, before.p, before.len) == 0);
    sd_safetensors *st = NULL;
    ck_assert_int_eq(sd_safetensors_open(path, &st), SD_OK);
    float got = 0;
    ck_assert_int_eq(sd_safetensors_read_f32(sd_safetensors_find(st, "w"), &got, 1), SD_OK);
    ck_assert(got == 7.0f);
    sd_safetensors_close(st);

    /* And a good write still replaces it. */
    ck_assert_int_eq(sd_safetensors_write(path, e2, 1, NULL, NULL, 0), SD_OK);
    ck_assert_int_eq(sd_safetensors_open(path, &st), SD_OK);
    ck_assert_uint_eq(sd_safetensors_find(st, "w")->numel, BIG);
    sd_safetensors_close(st);
    free(before.p);
    free(after.p);
    free(big);
    remove_tmpdir();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("io");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_exact_bytes);
    tcase_add_test(tc, test_unaligned_and_dtypes);
    tcase_add_test(tc, test_non_finite);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_truncation);
    tcase_add_test(tc, test_header_text);
    tcase_add_test(tc, test_keys_and_fields);
    tcase_add_test(tc, test_shapes);
    tcase_add_test(tc, test_offsets);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_write_errors);
    tcase_add_test(tc, test_crash_safety);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
