/* safetensors.h - strict safetensors reader and crash-safe F32 writer.
 *
 * Format (https://github.com/huggingface/safetensors, README "Format"):
 *
 *     [8 bytes]  N, unsigned little-endian u64: length of the header
 *     [N bytes]  UTF-8 JSON object, starts with '{', may be padded with ' '
 *                  {"__metadata__": {"key": "value", ...},          (optional)
 *                   "name": {"dtype": "F32", "shape": [2, 3],
 *                            "data_offsets": [BEGIN, END]}, ...}
 *     [rest]     byte buffer; BEGIN/END are relative to its start (file
 *                offset 8 + N), END is exclusive, data is little-endian and
 *                row-major with no strides.
 *
 * Reading. sd_safetensors_open reads the whole file and validates everything
 * before returning a handle (the reference reader's rules, plus stricter
 * ones): file >= 8 bytes; N <= 100,000,000 and 8 + N <= file size; header is
 * valid UTF-8, starts with '{', is one JSON object followed only by spaces,
 * has no duplicate keys (top level, metadata, tensor fields), numbers are
 * plain non-negative integers; each tensor object has exactly the fields
 * dtype (a known dtype), shape (at most 8 integers in [0, 2^48)) and
 * data_offsets (2 integers); element and bit counts do not overflow, bits are
 * a multiple of 8 and END - BEGIN matches them; sorted by offsets the
 * tensors start at 0 and tile the byte buffer with no gap or overlap, to its
 * very end (no trailing "polyglot" bytes); __metadata__ maps strings to
 * strings. Tensor values are not checked at open time: sd_safetensors_read_f32
 * refuses NaN and Inf.
 *
 *     sd_safetensors *st;
 *     if (sd_safetensors_open("ckpt.safetensors", &st) != SD_OK) {
 *         fprintf(stderr, "%s\n", sd_error_message()); return 1;
 *     }
 *     const sd_st_tensor *w = sd_safetensors_find(st, "model.conv1.weight");
 *     float buf[64];
 *     if (!w || sd_safetensors_read_f32(w, buf, 64) != SD_OK) ...;
 *     const char *step = sd_safetensors_meta(st, "step");   // NULL if absent
 *     sd_safetensors_close(st);
 *
 * Writing. sd_safetensors_write writes F32 tensors in name order with the
 * header padded by spaces to a multiple of 8 bytes (as the reference writer
 * does), so every tensor is 8-byte aligned in the file. It writes through
 * sd/file.h's atomic writer (a temporary file "<path>.tmp.<pid>.<n>", fsync,
 * close, rename() over path, fsync of the directory): a crash or a concurrent
 * reader never sees a torn file, and on failure the temp file is removed and
 * an existing file at path is left untouched. Opening goes through
 * sd_file_open_read: a FIFO or directory is refused, never waited on.
 *
 * Ownership: a handle from sd_safetensors_open owns the file bytes; one from
 * sd_safetensors_parse borrows the caller's buffer, which must outlive it.
 * Tensor `data` points into those bytes and may be unaligned: copy it with
 * sd_safetensors_read_f32 (or memcpy). Names and metadata strings live until
 * sd_safetensors_close.
 *
 * Threading: a handle is read-only after open, so lookups and reads may run
 * concurrently. Errors set the calling thread's sd_error_message().
 *
 * Errors: SD_ERR_IO (cannot open/read/write/rename), SD_ERR_FORMAT (malformed
 * file, wrong dtype), SD_ERR_INVALID (bad arguments, element count mismatch),
 * SD_ERR_NUMERIC (non-finite values), SD_ERR_NOMEM. Messages name the file
 * (or "<memory>" for parse) and the problem, e.g. "ckpt.safetensors: header
 * length 123456789012 exceeds the maximum 100000000".
 */
#ifndef SD_SAFETENSORS_H
#define SD_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sd/status.h"

enum {
    SD_ST_MAX_DIMS = 8,                         /* rank limit of sd_st_tensor */
    SD_ST_MAX_HEADER = 100000000                /* reference MAX_HEADER_SIZE */
};
#define SD_ST_MAX_FILE ((uint64_t)16 << 30)     /* 16 GiB: open() refuses larger */
#define SD_ST_MAX_DIM ((int64_t)281474976710655) /* 2^48 - 1, schema bound */

/* A tensor of an open file. shape[0..ndim) is row-major; ndim 0 is a scalar. */
typedef struct sd_st_tensor {
    const char *name;
    char dtype[16];        /* "F32", "F16", "BF16", "I64", ... */
    int ndim;
    int64_t shape[SD_ST_MAX_DIMS];
    size_t numel;          /* product of shape (1 for a scalar) */
    size_t nbytes;         /* END - BEGIN */
    const void *data;      /* nbytes bytes, little-endian, maybe unaligned */
    const char *source;    /* file name (or "<memory>") for error messages */
} sd_st_tensor;

typedef struct sd_safetensors sd_safetensors;

/* Reads and validates the whole file. On success *out owns the bytes. */
sd_status sd_safetensors_open(const char *path, sd_safetensors **out);

/* Validates an in-memory file image of len bytes. The handle borrows buf. */
sd_status sd_safetensors_parse(const void *buf, size_t len, sd_safetensors **out);

/* Number of tensors, and the i-th one in ascending (strcmp) name order. */
size_t sd_safetensors_count(const sd_safetensors *st);
const sd_st_tensor *sd_safetensors_at(const sd_safetensors *st, size_t i);

/* The tensor called name, or NULL (no error is set: absence is not a failure). */
const sd_st_tensor *sd_safetensors_find(const sd_safetensors *st, const char *name);

/* The __metadata__ value for key, or NULL if absent. */
const char *sd_safetensors_meta(const sd_safetensors *st, const char *key);
/* Number of __metadata__ entries, and the i-th (key, value) pair in
 * ascending (strcmp) key order; false if i is out of range. */
size_t sd_safetensors_meta_count(const sd_safetensors *st);
bool sd_safetensors_meta_at(const sd_safetensors *st, size_t i, const char **key,
                            const char **value);

/* Copies an F32 tensor into dst (n floats, n must equal t->numel) and checks
 * that every value is finite. On error dst's contents are unspecified. */
sd_status sd_safetensors_read_f32(const sd_st_tensor *t, float *dst, size_t n);

void sd_safetensors_close(sd_safetensors *st);

/* One tensor to write: data holds prod(shape) floats, row-major. */
typedef struct sd_st_entry {
    const char *name;
    int ndim;              /* 0..SD_ST_MAX_DIMS; 0 is a scalar */
    const int64_t *shape;  /* ndim entries in [0, 2^48); may be NULL if ndim 0 */
    const float *data;     /* may be NULL only if prod(shape) == 0 */
} sd_st_entry;

/* Writes entries (unique names, not "__metadata__") and n_meta metadata
 * key/value strings (unique keys; both UTF-8) to path, atomically (see above).
 * Metadata keys are written in strcmp order; __metadata__ is omitted if
 * n_meta == 0. Non-finite tensor values are refused (SD_ERR_NUMERIC). */
sd_status sd_safetensors_write(const char *path, const sd_st_entry *entries, size_t n,
                               const char *const *meta_keys, const char *const *meta_values,
                               size_t n_meta);

#endif
