/* cmd_report.c -- `mapo report`: a finished study folder -> an offline HTML report. */
#include <stdio.h>

#include "args.h"
#include "cmds.h"
#include "mapo/common.h"
#include "mapo/report.h"

#define NOPT(o) ((int)(sizeof(o) / sizeof((o)[0])))

int cmd_report(int argc, char **argv) {
    const char *study = NULL, *out = "report", *prefix = "report/";
    opt_def o[] = {
        {"study", OPT_STR, &study, "the study folder (study.json, runs/*/result.json)", 0},
        {"out", OPT_STR, &out, "output folder, created (report)", 0},
        {"md_prefix", OPT_STR, &prefix,
         "prefix of the image links in summary.md, relative to the repository root (report/)",
         0},
    };
    int r = args_parse(o, NOPT(o), argc, argv, 2,
                       "usage: mapo report --study DIR [--out DIR] [--md_prefix P]\n"
                       "A self-contained HTML report of a finished study: OUT/index.html "
                       "(tables, inline SVG plots, no JavaScript, opens offline), the image "
                       "grids as PNGs beside it, OUT/summary.json and OUT/summary.md.");
    if (r) return r > 0 ? 0 : -1;
    if (!study) return mapo_error("report needs --study DIR (see mapo report --help)");
    if (!out[0]) return mapo_error("--out must not be empty");
    report_opts ro = {study, out, prefix};
    if (report_build(&ro)) return -1;
    printf("%s/index.html: report of %s (also summary.json, summary.md)\n", out, study);
    return 0;
}
