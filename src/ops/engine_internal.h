/* engine_internal.h -- what the oneDNN backend's files (engine.c, engine_attention.c) share:
 * the engine, error handling, descriptors, attributes, workspaces, building apart. */
#ifndef MAPO_ENGINE_INTERNAL_H
#define MAPO_ENGINE_INTERNAL_H
#include <stddef.h>
#include <stdint.h>

#include <oneapi/dnnl/dnnl.h>

/* One line on stderr and exit(2): a oneDNN failure is a bug or an unsupported machine. */
void engine_fatal(dnnl_status_t s, const char *what);
#define DN(call)                                                                           \
    do {                                                                                   \
        dnnl_status_t s_ = (call);                                                         \
        if (s_ != dnnl_success) engine_fatal(s_, #call);                                   \
    } while (0)

extern dnnl_engine_t g_eng;
void engine_init(void);
dnnl_memory_desc_t md_tag(int nd, const int64_t *dims, dnnl_data_type_t dt,
                          dnnl_format_tag_t tag);
dnnl_memory_desc_t md_strides(int nd, const int64_t *dims, dnnl_data_type_t dt,
                              const int64_t *strides);
/* user scratchpad mode, and a sum post-op (dst +=) when sum */
dnnl_primitive_attr_t attr_new(int sum);
/* Grow-only buffers mapped apart from the heap, one per slot. */
enum { WS_IN0, WS_IN1, WS_OUT, WS_SCRATCH, WS_ATT_Q, WS_ATT_K, WS_ATT_V, WS_ATT_DO, WS_DY16,
       WS_COLSUM, WS_SLOTS };
void *engine_workspace(int slot, size_t bytes);
/* *buf grown (mapped anew, old contents dropped) to at least bytes; *have its size */
void *engine_grow(void **buf, size_t *have, size_t bytes);
/* thread t's grow-only buffer of at least bytes (engine_attention.c; t < ENGINE_MAXT): the
   attention kernels' per-thread tiles */
#define ENGINE_MAXT 256
char *engine_thread_buffer(int t, size_t bytes);
/* bytes of the attention's per-thread buffers (engine_attention.c) */
size_t engine_attention_buffer_bytes(void);
/* fn(arg) on a short-lived thread (its allocations come from another malloc arena) */
void engine_run_apart(void *(*fn)(void *), void *arg);
#endif
