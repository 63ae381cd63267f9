/* args.c -- see args.h. */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ops.h"

void args_usage(const opt_def *opts, int n, const char *usage) {
    printf("%s\n\noptions:\n", usage);
    for (int i = 0; i < n; i++) {
        const opt_kind k = opts[i].kind;
        const char *arg = k == OPT_FLAG || k == OPT_IGNORED_FLAG ? ""
                          : k == OPT_STR || k == OPT_IGNORED_VALUE ? " S"
                          : k == OPT_INT ? " N" : k == OPT_BOOL ? " true|false" : " X";
        char left[96];
        snprintf(left, sizeof left, "--%s%s", opts[i].name, arg);
        printf("  %-34s %s\n", left, opts[i].help);
    }
}

static int set_value(opt_def *o, const char *v) {
    char *end;
    switch (o->kind) {
    case OPT_STR: *(const char **)o->dst = v; return 0;
    case OPT_INT: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || *end || end == v)
            return mapo_error("--%s expects an integer, got '%s'", o->name, v);
        *(int64_t *)o->dst = x;
        return 0;
    }
    case OPT_DOUBLE: {
        errno = 0;
        double x = strtod(v, &end);
        if (errno || *end || end == v || !isfinite(x))
            return mapo_error("--%s expects a finite number, got '%s'", o->name, v);
        *(double *)o->dst = x;
        return 0;
    }
    case OPT_BOOL: {
        static const char *const yes[] = {"true", "True", "TRUE", "1", "yes"};
        static const char *const no[] = {"false", "False", "FALSE", "0", "no"};
        for (int i = 0; i < 5; i++) {
            if (!strcmp(v, yes[i])) return *(int *)o->dst = 1, 0;
            if (!strcmp(v, no[i])) return *(int *)o->dst = 0, 0;
        }
        return mapo_error("--%s expects true or false, got '%s'", o->name, v);
    }
    case OPT_IGNORED_VALUE:
        mapo_log(1, "note: --%s %s is ignored: %s\n", o->name, v, o->help);
        return 0;
    case OPT_FLAG:
    case OPT_IGNORED_FLAG: break;
    }
    return 0;
}

int args_parse(opt_def *opts, int n, int argc, char **argv, int first, const char *usage) {
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            args_usage(opts, n, usage);
            return 1;
        }
        if (strncmp(a, "--", 2))
            return mapo_error("unexpected argument '%s' (options start with --; see --help)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        opt_def *o = NULL;
        for (int k = 0; k < n; k++)
            if (strlen(opts[k].name) == len && !strncmp(opts[k].name, name, len)) o = &opts[k];
        if (!o) return mapo_error("unknown option '%.*s' (see --help)", (int)(len + 2), a);
        o->seen = 1;
        if (o->kind == OPT_FLAG || o->kind == OPT_IGNORED_FLAG) {
            if (eq) return mapo_error("--%s takes no value", o->name);
            if (o->kind == OPT_FLAG) *(int *)o->dst = 1;
            else mapo_log(1, "note: --%s is ignored: %s\n", o->name, o->help);
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) return mapo_error("--%s needs a value", o->name);
        if (set_value(o, v)) return -1;
    }
    return 0;
}

int mixed_precision_parse(const char *s, int *precision) {
    *precision = MAPO_F32;
    if (!s || !strcmp(s, "no")) return 0;
    if (strcmp(s, "bf16") && strcmp(s, "fp16"))
        return mapo_error("--mixed_precision must be no, bf16 or fp16, got '%s'", s);
    if (!mapo_precision_available(MAPO_BF16))
        return mapo_error("--mixed_precision %s: this CPU cannot compute in bf16 (oneDNN needs "
                          "AVX-512); use --mixed_precision no", s);
    *precision = MAPO_BF16;
    if (!strcmp(s, "fp16"))
        mapo_log(1, "note: --mixed_precision fp16: mapo's CPU engine has no fp16 path; running "
                    "as bf16 (the same memory, float32 master weights, no loss scaling needed)\n");
    else if (!mapo_precision_native(MAPO_BF16))
        mapo_log(1, "note: --mixed_precision bf16: this CPU has no bf16 instructions; oneDNN "
                    "emulates them (slower than float32)\n");
    return 0;
}
