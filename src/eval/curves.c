/* curves.c -- train_log.jsonl -> curves.html (see curves.h). */
#include "mapo/curves.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/report.h"
#include "mapo/safetensors.h"

enum { N_KEYS = 9 };
static const char *const keys[N_KEYS] = {"loss", "model_losses_w", "model_losses_l", "margin",
                                         "win_score", "lose_score", "implicit_acc",
                                         "grad_norm", "lr"};

int curves_write(const char *log_path, const char *html_path, const char *title) {
    FILE *f = fopen(log_path, "r");
    if (!f) return mapo_error("%s: cannot open", log_path);
    int n = 0, cap = 0, rc = 0;
    double *x = NULL, *y[N_KEYS] = {0};
    int have[N_KEYS] = {0};
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    int lineno = 0;
    while (!rc && (len = getline(&line, &lcap, f)) > 0) {
        lineno++;
        if (len <= 1) continue;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        json_t *st = o ? json_object_get(o, "step") : NULL;
        if (!o || !json_is_number(st)) {
            rc = mapo_error("%s:%d: not a log line with a numeric \"step\"", log_path, lineno);
            json_decref(o);
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            x = xrealloc(x, cap * sizeof(double));
            for (int k = 0; k < N_KEYS; k++) y[k] = xrealloc(y[k], cap * sizeof(double));
        }
        x[n] = json_number_value(st);
        for (int k = 0; k < N_KEYS; k++) {
            json_t *v = json_object_get(o, keys[k]);
            y[k][n] = json_is_number(v) ? json_number_value(v) : NAN;
            if (json_is_number(v)) have[k] = 1;
        }
        n++;
        json_decref(o);
    }
    free(line);
    fclose(f);
    if (!rc && n == 0) rc = mapo_error("%s: no log lines", log_path);
    if (!rc) {
        rbuf b = {0};
        rbuf_puts(&b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>");
        rbuf_html(&b, title);
        rbuf_puts(&b, "</title><style>body{font-family:sans-serif;margin:2em}"
                      "div.p{display:inline-block;margin:0.5em}</style></head><body><h1>");
        rbuf_html(&b, title);
        rbuf_printf(&b, "</h1><p>%d steps from ", n);
        rbuf_html(&b, log_path);
        rbuf_puts(&b, "</p>\n");
        static const char *const col[3] = {"#1f77b4", "#d62728", "#2ca02c"};
        /* one plot per group of keys */
        const int groups[6][3] = {{0, -1, -1}, {1, 2, -1}, {3, -1, -1}, {4, 5, -1}, {7, -1, -1},
                                  {8, -1, -1}};
        const char *gt[6] = {"loss", "denoising error: chosen (w), rejected (l)", "margin",
                             "MaPO win / lose score", "gradient norm", "learning rate"};
        for (int g = 0; g < 6; g++) {
            svg_series s[3];
            int ns = 0;
            for (int q = 0; q < 3 && groups[g][q] >= 0; q++) {
                const int k = groups[g][q];
                if (!have[k]) continue;
                s[ns] = (svg_series){keys[k], col[ns], x, y[k], n};
                ns++;
            }
            if (!ns) continue;
            rbuf_puts(&b, "<div class=\"p\">");
            svg_line_plot(&b, gt[g], "step", s, ns, 460, 300);
            rbuf_puts(&b, "</div>\n");
        }
        rbuf_puts(&b, "</body></html>\n");
        rc = mapo_write_file_atomic(html_path, b.s, b.len);
        rbuf_free(&b);
    }
    free(x);
    for (int k = 0; k < N_KEYS; k++) free(y[k]);
    return rc;
}
