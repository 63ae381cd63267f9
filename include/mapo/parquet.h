/* parquet.h -- a reader for the Apache Parquet files that pyarrow and Hugging Face
 * `datasets` write (Pick-a-Pic style preference shards), in plain C.
 *
 * The file is memory-mapped; parquet_open parses only the footer (FileMetaData, Thrift
 * compact protocol). Data is read one column chunk (one column of one row group) at a time
 * with parquet_read_column, so a 400 MB shard never has to be resident as a whole.
 *
 * Supported: flat top-level columns (REQUIRED or OPTIONAL; nulls come back as valid[i] = 0)
 * of physical type BOOLEAN, INT32, INT64, FLOAT, DOUBLE (read as doubles) and BYTE_ARRAY,
 * FIXED_LEN_BYTE_ARRAY (read as byte strings); pages DATA_PAGE (v1), DATA_PAGE_V2,
 * DICTIONARY_PAGE (INDEX_PAGE and unknown page types are skipped); encodings PLAIN,
 * PLAIN_DICTIONARY / RLE_DICTIONARY, RLE (levels, and booleans); codecs UNCOMPRESSED,
 * SNAPPY, GZIP, ZSTD. Page CRCs are verified when present.
 * Refused with one message naming the file, the row group and the column: nested or
 * repeated columns (they are listed, with dotted paths such as "tags.list.element", but
 * cannot be read), INT96, other codecs (LZ4, LZ4_RAW, BROTLI, LZO), DELTA_* and
 * BYTE_STREAM_SPLIT encodings, column chunks in external files, encrypted files.
 * Unsigned integer annotations (UINT_8 .. UINT_64) are honoured; other logical types are
 * not applied: an INT32 DATE reads as its day count, a DECIMAL as its unscaled integer, a
 * timestamp as its raw count. Integers beyond 2^53 are rounded to the nearest double.
 *
 * Hostile files: every offset and length is checked against the file size, the Thrift
 * reader has depth and size limits, page value counts are checked against row counts,
 * dictionary indices against the dictionary, bit widths (<= 32), decompressed sizes against
 * the page headers. Errors: -1 after mapo_error (see common.h), never a crash.
 *
 * Thread safety: a parquet_file is not modified after parquet_open, so several threads may
 * call parquet_read_column on the same file at once (each with its own parquet_column). */
#ifndef MAPO_PARQUET_H
#define MAPO_PARQUET_H
#include <stdint.h>

typedef struct parquet_file parquet_file;

/* Rows one row group may have (the outputs of parquet_read_column are allocated up front). */
#define PARQUET_MAX_ROWS_PER_GROUP ((int64_t)1 << 26)
/* Bytes one page may declare uncompressed (refused before the page is decompressed); a page
 * may also not declare more than its codec could produce from its compressed bytes (SNAPPY
 * 22:1, GZIP 1032:1, ZSTD 65536:1, UNCOMPRESSED 1:1). docs/RELIABILITY.md "Hostile sizes". */
#define PARQUET_MAX_PAGE_BYTES ((int64_t)1 << 30)

/* Open and parse the footer; 0, or -1 + mapo_error naming the file and the problem. */
int parquet_open(parquet_file **pf, const char *path);
void parquet_close(parquet_file *pf);

int64_t parquet_num_rows(const parquet_file *pf);
int parquet_num_row_groups(const parquet_file *pf);
/* Rows of row group rg; -1 when rg is out of range. */
int64_t parquet_row_group_num_rows(const parquet_file *pf, int rg);
/* Leaf columns, in file order (one per column chunk of a row group). */
int parquet_num_columns(const parquet_file *pf);
/* The column's path: its name for a top-level column, "a.b.c" for a nested leaf.
 * NULL when col is out of range. */
const char *parquet_column_name(const parquet_file *pf, int col);
/* Index of the column with this exact (dotted) name; -1 when absent (no error). */
int parquet_column_index(const parquet_file *pf, const char *name);

enum { PQ_BYTES = 1, PQ_DOUBLE = 2 }; /* what a column is read as */

/* What parquet_read_column would return the column as: PQ_BYTES, PQ_DOUBLE, or 0 when it
 * cannot be read (nested, repeated, INT96, out of range). Lets callers check a schema
 * before reading. */
int parquet_column_kind(const parquet_file *pf, int col);

typedef struct {
    int64_t n;           /* rows in this row group */
    int kind;            /* PQ_BYTES (BYTE_ARRAY/FIXED) or PQ_DOUBLE (any numeric/bool type) */
    uint8_t *valid;      /* [n]: 0 = null */
    double *num;         /* [n] (PQ_DOUBLE; NAN where null), else NULL */
    const uint8_t **ptr; /* [n] (PQ_BYTES): pointers into storage owned by the column;
                            NULL where null (an empty value has a non-NULL ptr, len 0) */
    int64_t *len;        /* [n] (PQ_BYTES), else NULL */
    void *storage_;      /* internal */
} parquet_column;

/* Read column col of row group rg into out (which the caller frees with
 * parquet_column_free; out stays valid after parquet_close). 0, or -1 + mapo_error naming
 * the file, row group and column (out is then empty and need not be freed). */
int parquet_read_column(parquet_file *pf, int rg, int col, parquet_column *out);
/* Frees what parquet_read_column allocated and zeroes *c; safe on a zeroed column. */
void parquet_column_free(parquet_column *c);

#endif
