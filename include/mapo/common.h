/* common.h -- errors, checked allocation, logging.
 * Library functions report failure by returning -1 (or NULL) after recording one
 * clear message with mapo_error(); the CLI prints it as "mapo: error: ..." and exits 1.
 * Out-of-memory is the one exception: xmalloc prints and exits (nothing sane to do). */
#ifndef MAPO_COMMON_H
#define MAPO_COMMON_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define MAPO_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MAPO_PRINTF(a, b)
#endif

/* Record an error message (printf-style); always returns -1. */
int mapo_error(const char *fmt, ...) MAPO_PRINTF(1, 2);
/* The last recorded message ("" if none). */
const char *mapo_last_error(void);
/* Prefix the current message: "<prefix>: <old message>"; returns -1. */
int mapo_error_prefix(const char *fmt, ...) MAPO_PRINTF(1, 2);

void *mapo_xmalloc_(size_t n, const char *file, int line);
void *mapo_xcalloc_(size_t n, size_t sz, const char *file, int line);
void *mapo_xrealloc_(void *p, size_t n, const char *file, int line);
char *mapo_xstrdup_(const char *s, const char *file, int line);
/* memset(p, 0, bytes), split over the OpenMP threads when large (a step zeroes its gradients:
   serial, that was 3% of a bf16 training step with the other core waiting) */
void mapo_zero(void *p, size_t bytes);
#define xmalloc(n) mapo_xmalloc_((n), __FILE__, __LINE__)
#define xcalloc(n, s) mapo_xcalloc_((n), (s), __FILE__, __LINE__)
#define xrealloc(p, n) mapo_xrealloc_((p), (n), __FILE__, __LINE__)
#define xstrdup(s) mapo_xstrdup_((s), __FILE__, __LINE__)

/* Logging to stderr; level 0 = quiet, 1 = info (default), 2 = debug. */
extern int mapo_log_level;
void mapo_log(int level, const char *fmt, ...) MAPO_PRINTF(2, 3);

/* mkdir -p (0755); -1 + a message naming the component that cannot be created. */
int mapo_mkdir_p(const char *path);

/* 1 when path names a directory / a regular file (links followed), else 0. */
int mapo_is_dir(const char *path);
int mapo_is_file(const char *path);

/* diffusers' --variant (e.g. "fp16"): weights files "<name>.<variant>.safetensors" are read
 * instead of "<name>.safetensors" where a folder has them (else the plain file, with one note, as
 * diffusers falls back). NULL: none. Process-wide, set once by the command line. */
void mapo_set_weights_variant(const char *variant);
/* dir/file (file = "<name>.safetensors") resolved for the variant. */
void mapo_weights_path(char *buf, size_t n, const char *dir, const char *file);
/* The --variant set by mapo_set_weights_variant, or NULL. */
const char *mapo_weights_variant(void);

/* Wall clock seconds (monotonic). */
double mapo_now(void);
/* Peak resident set size of this process in bytes (from getrusage). */
size_t mapo_peak_rss(void);
/* Resident set size of this process now, in bytes (from /proc/self/statm; 0 if unreadable). */
size_t mapo_rss(void);

#endif
