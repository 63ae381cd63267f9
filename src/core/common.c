/* common.c -- error messages, checked allocation, logging, clocks. */
#include "mapo/common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char g_err[1024];
int mapo_log_level = 1;

int mapo_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return -1;
}

const char *mapo_last_error(void) { return g_err; }

int mapo_error_prefix(const char *fmt, ...) {
    char pre[512], old[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, g_err, sizeof old);
    size_t lp = strlen(pre);
    if (lp > sizeof g_err - 3) lp = sizeof g_err - 3;
    memcpy(g_err, pre, lp);
    g_err[lp] = ':';
    g_err[lp + 1] = ' ';
    size_t room = sizeof g_err - lp - 3, lo = strlen(old);
    if (lo > room) lo = room;
    memcpy(g_err + lp + 2, old, lo);
    g_err[lp + 2 + lo] = 0;
    return -1;
}

static void oom(size_t n, const char *file, int line) {
    fprintf(stderr, "mapo: error: out of memory allocating %zu bytes (%s:%d); "
                    "use a smaller batch or model\n", n, file, line);
    exit(2);
}

void *mapo_xmalloc_(size_t n, const char *file, int line) {
    /* 64-byte alignment (a cache line, an AVX-512 vector) for everything big: BLAS and the
       vectorised loops run measurably slower and less predictably on 16-byte-aligned rows */
    void *p = n >= 4096 ? aligned_alloc(64, (n + 63) & ~(size_t)63) : malloc(n ? n : 1);
    if (!p) oom(n, file, line);
    return p;
}
void mapo_zero(void *p, size_t bytes) {
    enum { CHUNK = 1 << 18 };
    const long long nc = (long long)((bytes + CHUNK - 1) / CHUNK);
#pragma omp parallel for schedule(static) if (nc > 1)
    for (long long c = 0; c < nc; c++) {
        const size_t o = (size_t)c * CHUNK;
        memset((char *)p + o, 0, bytes - o < CHUNK ? bytes - o : CHUNK);
    }
}

void *mapo_xcalloc_(size_t n, size_t sz, const char *file, int line) {
    if (sz && n > SIZE_MAX / sz) oom(SIZE_MAX, file, line);
    size_t bytes = n * sz;
    if (bytes >= 4096) {
        void *q = mapo_xmalloc_(bytes, file, line);
        mapo_zero(q, bytes);
        return q;
    }
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) oom(n * sz, file, line);
    return p;
}
void *mapo_xrealloc_(void *q, size_t n, const char *file, int line) {
    void *p = realloc(q, n ? n : 1);
    if (!p) oom(n, file, line);
    return p;
}
char *mapo_xstrdup_(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *p = mapo_xmalloc_(n, file, line);
    memcpy(p, s, n);
    return p;
}

void mapo_log(int level, const char *fmt, ...) {
    if (level > mapo_log_level) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

double mapo_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

size_t mapo_peak_rss(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (size_t)ru.ru_maxrss * 1024;
}

static const char *g_variant;

void mapo_set_weights_variant(const char *variant) {
    g_variant = variant && *variant ? variant : NULL;
}

const char *mapo_weights_variant(void) { return g_variant; }

void mapo_weights_path(char *buf, size_t n, const char *dir, const char *file) {
    const size_t fl = strlen(file), ext = strlen(".safetensors");
    if (g_variant && fl > ext && !strcmp(file + fl - ext, ".safetensors")) {
        snprintf(buf, n, "%s/%.*s.%s.safetensors", dir, (int)(fl - ext), file, g_variant);
        if (mapo_is_file(buf)) return;
        static int told;
        snprintf(buf, n, "%s/%s", dir, file);
        if (mapo_is_file(buf) && !told++)
            mapo_log(1, "note: no %s variant of %s/%s: using the plain weights file (as diffusers "
                        "falls back)\n", g_variant, dir, file);
    }
    snprintf(buf, n, "%s/%s", dir, file);
}

size_t mapo_rss(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

int mapo_mkdir_p(const char *path) {
    char t[4200];
    if (snprintf(t, sizeof t, "%s", path) >= (int)sizeof t)
        return mapo_error("%.200s...: path too long", path);
    for (char *s = t + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(t, 0755) && errno != EEXIST)
            return mapo_error("%s: cannot create folder: %s", t, strerror(errno));
        *s = '/';
    }
    if (mkdir(t, 0755) && errno != EEXIST)
        return mapo_error("%s: cannot create folder: %s", t, strerror(errno));
    return 0;
}

int mapo_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int mapo_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
