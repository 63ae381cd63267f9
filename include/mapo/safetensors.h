/* safetensors.h -- reading (mmap, fully validated) and atomic writing.
 * Format: u64 little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"k": "v"}}
 * then the data buffer; offsets are relative to the start of the buffer.
 * st_open refuses (one message naming the file and the problem): a short file, a
 * header length past the end, bad JSON, unknown dtypes, shapes whose byte size does not
 * match the offsets, offsets outside the buffer, overlapping tensors, duplicate names. */
#ifndef MAPO_SAFETENSORS_H
#define MAPO_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

typedef enum {
    ST_F32 = 0, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL,
    ST_NDTYPES
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data; /* points into the mapping (may be unaligned) */
} st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    int n;
    st_tensor *tensors; /* sorted by name (st_find is a binary search) */
    int n_meta;
    char **meta_keys;
    char **meta_values;
} st_file;

const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);

/* Open and validate; 0 on success, -1 with mapo_last_error() set. */
int st_open(st_file *f, const char *path);
void st_close(st_file *f);
/* NULL when absent. */
const st_tensor *st_find(const st_file *f, const char *name);
/* Done with t's bytes: the mapped pages wholly inside it leave this process's resident set
   (they stay in the page cache and fault back in if read again). Loading a model copies every
   tensor into its float32 arena; without this the file's pages stayed resident until the file
   was closed, so loading a 10 GB SDXL UNet peaked at twice its size. */
void st_tensor_release(const st_tensor *t);
/* Metadata value or NULL. */
const char *st_meta(const st_file *f, const char *key);
/* Exact scalar conversions: IEEE binary16 and bfloat16 bit patterns to float32. */
float st_half_to_float(uint16_t h);
float st_bf16_to_float(uint16_t h);
/* n F16 or BF16 values (d) at src, which may be unaligned, to float32 */
void st_half_to_f32(st_dtype d, const void *src, float *dst, int64_t n);
/* float32 -> IEEE binary16 / bfloat16 bit patterns, round to nearest even, as torch's .half()
 * and .bfloat16(): F16 values from 65520 up (in magnitude) become +-inf, BF16 values past
 * FLT_MAX's rounding neighbourhood too; NaN stays NaN (F16 0x7e00 with the sign, BF16 0x7fc0). */
uint16_t st_float_to_half(float x);
uint16_t st_float_to_bf16(float x);
/* n float32 values into dst (2 bytes each) as F16 or BF16; returns how many finite values
 * became infinite (F16 overflow). */
int64_t st_from_f32(st_dtype d, const float *src, void *dst, int64_t n);
/* Convert any floating dtype (F32, F16, BF16, F64) to float32 into dst (numel floats).
 * -1 for non-float dtypes. */
int st_to_f32(const st_tensor *t, float *dst);
/* Same, to float64. */
int st_to_f64(const st_tensor *t, double *dst);
/* Find `name`, check it is a float tensor of exactly the given shape (ndim dims), and
 * convert into dst. Errors name the file, the tensor and the shapes. */
int st_read_f32_shape(const st_file *f, const char *name, float *dst, int ndim,
                      const int64_t *shape);

/* Precision flags (--save_precision, --cache_precision): "float32" -> ST_F32, "fp16" ->
 * ST_F16, "bf16" -> ST_BF16; else -1 + mapo_error naming the flag. st_precision_name is the
 * inverse (the word recorded in metadata). */
int st_precision_parse(const char *s, const char *flag, st_dtype *d);
const char *st_precision_name(st_dtype d);

/* Sharded checkpoints (save_pretrained(max_shard_size=...)): an index JSON
 * {"metadata": {...}, "weight_map": {"tensor": "shard file", ...}} next to its shards.
 * st_index_open refuses (one message naming the index file): bad JSON, no weight_map object,
 * a value that is not a plain file name of this folder (empty, a '/', a "..", not ending in
 * .safetensors), an unreadable or invalid shard, a tensor missing from the shard the map names.
 * Shards stay mapped until st_index_close; st_index_find looks through the map. */
typedef struct {
    char *path;        /* the index file */
    int n_shards;
    st_file *shards;
    int n;             /* tensors in weight_map, sorted by name */
    char **names;
    const st_tensor **tensors;
} st_index;
int st_index_open(st_index *x, const char *index_path);
void st_index_close(st_index *x);
const st_tensor *st_index_find(const st_index *x, const char *name);
/* 1 when path names an index ("*.index.json" or "*.index.<variant>.json"). */
int st_is_index(const char *path);
/* The bytes of the shards an index names (0 when it cannot be read: the loader reports that). */
uint64_t st_index_shard_bytes(const char *index_path);
/* The weights of a model folder: the --variant file (mapo_weights_variant) as one file
 * (<stem>.<v>.safetensors) or sharded (<file>.index.<v>.json, or the older
 * <stem>.<v>.safetensors.index.json), then the plain file, then plain sharded
 * (<file>.index.json). 0 with buf set to what exists; -1 (no error set) with buf = dir/file when
 * none does. */
int st_weights_find(char *buf, size_t n, const char *dir, const char *file);

/* Writing: collect entries, then write atomically (temp file in the same folder,
 * fsync, rename). Data is copied at write time only; pointers must stay valid until
 * st_writer_write returns. */
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim,
                   const int64_t *shape, const void *data);
void st_writer_meta(st_writer *w, const char *key, const char *value);
/* A float32 source stored as `store`: F16 or BF16 (converted in chunks at write time, round to
 * nearest even as torch's .half() / .bfloat16()); any other value stores it as F32. The savers
 * that take a save precision (unet_save_dir_as, unet_lora_save_as, ...) add through this.
 * st_f32_overflows: finite values that became inf in such conversions (F16 beyond 65504) since
 * the last call with reset = 1. */
void st_writer_add_f32_as(st_writer *w, const char *name, st_dtype store, int ndim,
                          const int64_t *shape, const float *data);
int64_t st_f32_overflows(int reset);
int st_writer_write(st_writer *w, const char *path);
void st_writer_free(st_writer *w);
/* Streaming, for files larger than memory: declare tensors without data (st_writer_add_empty),
 * st_writer_begin writes the header into a temporary file of the final size, st_writer_put
 * writes n bytes at a byte offset inside tensor i (index in add order), st_writer_commit
 * fsyncs and renames into place. st_writer_free without a commit removes the temporary file,
 * so an interrupted run leaves any earlier file at the path untouched. */
void st_writer_add_empty(st_writer *w, const char *name, st_dtype dtype, int ndim,
                         const int64_t *shape);
int st_writer_begin(st_writer *w, const char *path);
int st_writer_put(st_writer *w, int tensor, size_t offset, const void *data, size_t n);
int st_writer_commit(st_writer *w);

/* Atomic whole-file write: path.tmp.<pid> then fsync + rename + fsync(dir). */
int mapo_write_file_atomic(const char *path, const void *data, size_t n);

#endif
