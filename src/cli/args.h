/* args.h -- a small --flag value / --flag=value parser shared by the subcommands.
 * Each subcommand declares a table of options; unknown flags and missing values are
 * one clear error. */
#ifndef MAPO_CLI_ARGS_H
#define MAPO_CLI_ARGS_H
#include <stdint.h>

/* OPT_BOOL: a value true|false|1|0|yes|no (int *). OPT_IGNORED_FLAG / OPT_IGNORED_VALUE:
   accepted so command lines of the official scripts run unchanged, and ignored with one note
   on stderr that gives the reason (the help text); dst unused. */
typedef enum {
    OPT_STR, OPT_INT, OPT_DOUBLE, OPT_FLAG, OPT_BOOL, OPT_IGNORED_FLAG, OPT_IGNORED_VALUE
} opt_kind;
typedef struct {
    const char *name; /* without the leading -- */
    opt_kind kind;
    void *dst;        /* const char **, int64_t *, double *, int * */
    const char *help;
    int seen;
} opt_def;

/* Parse argv[first..argc); returns 0, 1 if --help was given (usage printed), -1 on error
 * (message in mapo_last_error). */
int args_parse(opt_def *opts, int n, int argc, char **argv, int first, const char *usage);
void args_usage(const opt_def *opts, int n, const char *usage);
/* --mixed_precision no | bf16 | fp16 (NULL: no) into a mapo_precision (ops.h). fp16 on a machine
   without fast fp16 arithmetic says so in one line and runs as bf16. 0 or -1 + mapo_error. */
int mixed_precision_parse(const char *s, int *precision);

#endif
