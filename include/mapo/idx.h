/* idx.h -- IDX files (the MNIST / Fashion-MNIST format), gzipped or plain, uint8 only,
 * and a Fashion-MNIST loader on top of them.
 * An IDX file is a 4-byte big-endian magic 0x0000TTNN (two zero bytes, the element type TT,
 * here always 0x08 = uint8, and the number of dimensions NN), NN big-endian uint32
 * dimensions, then the product of the dimensions in bytes, row-major, and nothing after.
 * Files are read through zlib, so a gzip file and a plain one are read alike. The reader
 * validates the whole header before it allocates anything (magic, type code, number of
 * dimensions, every dimension in 1..2^31-1, the product without int64 overflow and within
 * the caller's byte limit), grows its buffer only as data actually arrives (a lying header
 * cannot make it allocate more than about twice what the file holds), and refuses a short
 * or corrupt stream and bytes past the declared data. Every failure returns -1 with one
 * message naming the file (mapo_last_error()). fmnist_load reads a split as the Debian package
 * dataset-fashion-mnist installs it (<dir>/<prefix>-{images-idx3,labels-idx1}-ubyte.gz, or
 * the same names without .gz) and fmnist_to_pixels turns images into the [-1,1] float
 * tensors a diffusion model trains on. */
#ifndef MAPO_IDX_H
#define MAPO_IDX_H
#include <stdint.h>

#define IDX_MAX_DIMS 4

typedef struct {
    int ndim;
    int64_t dims[IDX_MAX_DIMS];
    int64_t count; /* product of dims */
    uint8_t *data;
} idx_u8;

/* Read path (gzip or plain). want_ndim: required number of dims (1 labels, 3 images; 0 = any
   1..4). max_bytes: refuse (before allocating) a file whose header declares more than this many
   data bytes; max_bytes <= 0 sets no limit of its own (the growing buffer still bounds memory
   by what the file holds). On failure *out is zeroed and nothing is left allocated. */
int idx_read_u8(idx_u8 *out, const char *path, int want_ndim, int64_t max_bytes);
/* As idx_read_u8, but keeps only the first max_items entries along dimension 0 when
   0 < max_items < dims[0] (out->dims[0] and out->count shrink accordingly; the rest of the file
   is not read, so it is not checked for truncation or trailing bytes). *declared_dim0, when not
   NULL, receives dims[0] as the header declares it. max_items <= 0 reads everything. */
int idx_read_u8_head(idx_u8 *out, const char *path, int want_ndim, int64_t max_bytes,
                     int64_t max_items, int64_t *declared_dim0);
void idx_free(idx_u8 *a);

typedef struct {
    int64_t n;
    int h, w;
    uint8_t *images; /* [n,h,w] */
    uint8_t *labels; /* [n] */
} fmnist_split;

/* Load <dir>/<prefix>-images-idx3-ubyte[.gz] and <dir>/<prefix>-labels-idx1-ubyte[.gz], prefix
   "train" or "t10k" (the .gz name is preferred when both exist). Checks: image count == label
   count, labels < 10, h,w in 1..1024 (28x28 not required). max_n > 0 keeps the first max_n items
   only (both headers are still validated and their counts compared). On failure *s is zeroed. */
int fmnist_load(fmnist_split *s, const char *dir, const char *prefix, int64_t max_n);
void fmnist_free(fmnist_split *s);
/* The Debian package's folder, "/usr/share/datasets/fashion-mnist", unless the environment
   variable MAPO_FASHION_MNIST names another (an empty value counts as unset). */
const char *fmnist_default_dir(void);
/* Class names, index 0..9: "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
   "Shirt", "Sneaker", "Bag", "Ankle boot". */
extern const char *const FMNIST_CLASSES[10];
/* n images of h x w uint8 -> float [n,1,size,size] in [-1,1] (x/127.5 - 1), centred with
   zero-valued (i.e. -1) padding when size > h,w (28 -> 32 pads 2 on every side; an odd margin
   puts the extra row / column at the bottom / right); size < h or size < w is an error
   (returns -1, out untouched). */
int fmnist_to_pixels(float *out, const uint8_t *img, int64_t n, int h, int w, int size);

#endif
