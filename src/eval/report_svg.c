/* report_svg.c -- the text buffer and the inline SVG plots of `mapo report` (see report.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/report.h"

/* ------------------------------------------------------------------------------------------ */
/* buffer                                                                                      */

static void rbuf_reserve(rbuf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra + 1) cap *= 2;
    b->s = xrealloc(b->s, cap);
    b->cap = cap;
}

void rbuf_puts(rbuf *b, const char *s) {
    size_t n = strlen(s);
    rbuf_reserve(b, n);
    memcpy(b->s + b->len, s, n + 1);
    b->len += n;
}

void rbuf_printf(rbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof tmp) {
        rbuf_reserve(b, (size_t)n);
        memcpy(b->s + b->len, tmp, (size_t)n + 1);
        b->len += (size_t)n;
    } else if (n > 0) {
        rbuf_reserve(b, (size_t)n);
        vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

void rbuf_html(rbuf *b, const char *s) {
    if (!s) {
        rbuf_puts(b, "n/a");
        return;
    }
    for (const char *p = s; *p; p++) {
        switch (*p) {
        case '&': rbuf_puts(b, "&amp;"); break;
        case '<': rbuf_puts(b, "&lt;"); break;
        case '>': rbuf_puts(b, "&gt;"); break;
        case '"': rbuf_puts(b, "&quot;"); break;
        case '\'': rbuf_puts(b, "&#39;"); break;
        default: {
            char c[2] = {*p, 0};
            /* C0 controls other than tab / newline are not allowed in HTML text */
            if ((unsigned char)*p < 0x20 && *p != '\t' && *p != '\n') c[0] = ' ';
            rbuf_puts(b, c);
        }
        }
    }
}

void rbuf_free(rbuf *b) {
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* ticks and axes                                                                              */

void svg_nice_ticks(double lo, double hi, int target, double *t0, double *step, int *count) {
    if (!isfinite(lo) || !isfinite(hi)) lo = 0, hi = 1;
    if (hi < lo) {
        double t = lo;
        lo = hi;
        hi = t;
    }
    if (hi - lo <= 1e-12 * fmax(fabs(lo), fabs(hi))) {
        double d = lo != 0 ? fabs(lo) * 0.1 : 1.0;
        lo -= d;
        hi += d;
    }
    if (target < 1) target = 1;
    const double raw = (hi - lo) / target;
    const double mag = pow(10, floor(log10(raw)));
    const double f = raw / mag;
    const double nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    const double st = nice * mag;
    double a = floor(lo / st + 1e-9) * st, e = ceil(hi / st - 1e-9) * st;
    int c = (int)lround((e - a) / st) + 1;
    if (c < 2) c = 2;
    *t0 = a;
    *step = st;
    *count = c;
}

static void fmt_tick(char *buf, size_t n, double v, double step) {
    if (fabs(v) < step * 1e-6) v = 0;
    int d = (int)fmax(0, -floor(log10(step) + 1e-9));
    if (d > 5 || fabs(v) >= 1e6) snprintf(buf, n, "%.3g", v);
    else snprintf(buf, n, "%.*f", d, v);
}

typedef struct {
    double x0, x1, y0, y1;        /* data range of the axes */
    double px0, px1, py0, py1;    /* pixel box: left, right, top, bottom */
    double xt0, xst, yt0, yst;
    int xn, yn;
} axes;

static double ax_x(const axes *a, double x) {
    return a->px0 + (x - a->x0) / (a->x1 - a->x0) * (a->px1 - a->px0);
}
static double ax_y(const axes *a, double y) {
    return a->py1 - (y - a->y0) / (a->y1 - a->y0) * (a->py1 - a->py0);
}

static void axes_set(axes *a, double xlo, double xhi, double ylo, double yhi) {
    svg_nice_ticks(xlo, xhi, 5, &a->xt0, &a->xst, &a->xn);
    svg_nice_ticks(ylo, yhi, 4, &a->yt0, &a->yst, &a->yn);
    a->x0 = a->xt0;
    a->x1 = a->xt0 + (a->xn - 1) * a->xst;
    a->y0 = a->yt0;
    a->y1 = a->yt0 + (a->yn - 1) * a->yst;
}

static void axes_draw(rbuf *b, const axes *a, const char *xlabel, const char *ylabel) {
    char t[64];
    rbuf_printf(b, "<g class=\"grid\" stroke=\"#e4e4e4\" stroke-width=\"1\">");
    for (int i = 0; i < a->yn; i++) {
        double y = ax_y(a, a->yt0 + i * a->yst);
        rbuf_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", a->px0, y,
                    a->px1, y);
    }
    rbuf_puts(b, "</g>\n");
    rbuf_printf(b,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                "stroke=\"#444\" stroke-width=\"1\"/>\n",
                a->px0, a->py0, a->px1 - a->px0, a->py1 - a->py0);
    rbuf_puts(b, "<g font-size=\"10\" fill=\"#333\">");
    for (int i = 0; i < a->xn; i++) {
        double v = a->xt0 + i * a->xst, x = ax_x(a, v);
        fmt_tick(t, sizeof t, v, a->xst);
        rbuf_printf(b,
                    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>"
                    "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>",
                    x, a->py1, x, a->py1 + 4, x, a->py1 + 15, t);
    }
    for (int i = 0; i < a->yn; i++) {
        double v = a->yt0 + i * a->yst, y = ax_y(a, v);
        fmt_tick(t, sizeof t, v, a->yst);
        rbuf_printf(b,
                    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>"
                    "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>",
                    a->px0 - 4, y, a->px0, y, a->px0 - 6, y + 3.5, t);
    }
    rbuf_puts(b, "</g>\n");
    if (xlabel) {
        rbuf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">",
                    0.5 * (a->px0 + a->px1), a->py1 + 30);
        rbuf_html(b, xlabel);
        rbuf_puts(b, "</text>\n");
    }
    if (ylabel) {
        double cx = 12, cy = 0.5 * (a->py0 + a->py1);
        rbuf_printf(b,
                    "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\" "
                    "transform=\"rotate(-90 %.1f %.1f)\">",
                    cx, cy, cx, cy);
        rbuf_html(b, ylabel);
        rbuf_puts(b, "</text>\n");
    }
}

static void svg_open(rbuf *b, const char *title, int w, int h) {
    rbuf_printf(b,
                "<svg class=\"plot\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                "role=\"img\" aria-label=\"",
                w, h, w, h);
    rbuf_html(b, title);
    rbuf_puts(b, "\" font-family=\"sans-serif\">\n");
    rbuf_printf(b, "<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n", w, h);
    if (title) {
        rbuf_printf(b,
                    "<text x=\"%.1f\" y=\"15\" font-size=\"12\" font-weight=\"bold\" "
                    "text-anchor=\"middle\">",
                    w * 0.5);
        rbuf_html(b, title);
        rbuf_puts(b, "</text>\n");
    }
}

/* ------------------------------------------------------------------------------------------ */
/* line plot                                                                                   */

#define CHAR_W 6.2 /* rough width of a character at font-size 11 */

void svg_line_plot(rbuf *b, const char *title, const char *xlabel, const svg_series *s, int ns,
                   int width, int height) {
    /* legend layout: entries in rows under the title */
    double lx = 8, ly = 30;
    int rows = 1;
    for (int i = 0; i < ns; i++) {
        double ew = 26 + CHAR_W * (double)strlen(s[i].label ? s[i].label : "n/a") + 12;
        if (lx + ew > width - 8 && lx > 8) {
            rows++;
            lx = 8;
        }
        lx += ew;
    }
    axes a;
    a.px0 = 56;
    a.px1 = width - 12;
    a.py0 = 24 + 15 * rows + 4;
    a.py1 = height - 36;
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    int any = 0;
    for (int i = 0; i < ns; i++)
        for (int k = 0; k < s[i].n; k++) {
            double x = s[i].x[k], y = s[i].y[k];
            if (!isfinite(x) || !isfinite(y)) continue;
            any = 1;
            xlo = fmin(xlo, x), xhi = fmax(xhi, x), ylo = fmin(ylo, y), yhi = fmax(yhi, y);
        }
    if (!any) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
    axes_set(&a, xlo, xhi, ylo, yhi);
    svg_open(b, title, width, height);
    axes_draw(b, &a, xlabel, NULL);
    if (!any)
        rbuf_printf(b,
                    "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#888\" "
                    "text-anchor=\"middle\">n/a</text>\n",
                    0.5 * (a.px0 + a.px1), 0.5 * (a.py0 + a.py1));
    for (int i = 0; i < ns; i++) {
        const char *col = s[i].color ? s[i].color : "#000";
        int pen = 0, npts = 0;
        double lastx = 0, lasty = 0;
        rbuf_printf(b, "<path fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" d=\"", col);
        for (int k = 0; k < s[i].n; k++) {
            double x = s[i].x[k], y = s[i].y[k];
            if (!isfinite(x) || !isfinite(y)) {
                pen = 0;
                continue;
            }
            lastx = ax_x(&a, x), lasty = ax_y(&a, y);
            rbuf_printf(b, "%c%.1f %.1f ", pen ? 'L' : 'M', lastx, lasty);
            pen = 1;
            npts++;
        }
        rbuf_puts(b, "\"/>\n");
        if (npts == 1)
            rbuf_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n", lastx,
                        lasty, col);
    }
    lx = 8, ly = 30;
    rbuf_puts(b, "<g font-size=\"11\">");
    for (int i = 0; i < ns; i++) {
        const char *lab = s[i].label ? s[i].label : "n/a";
        double ew = 26 + CHAR_W * (double)strlen(lab) + 12;
        if (lx + ew > width - 8 && lx > 8) {
            ly += 15;
            lx = 8;
        }
        rbuf_printf(b,
                    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                    "stroke-width=\"2.5\"/><text x=\"%.1f\" y=\"%.1f\">",
                    lx, ly - 4, lx + 20, ly - 4, s[i].color ? s[i].color : "#000", lx + 25,
                    ly);
        rbuf_html(b, lab);
        rbuf_puts(b, "</text>");
        lx += ew;
    }
    rbuf_puts(b, "</g>\n</svg>\n");
}

/* ------------------------------------------------------------------------------------------ */
/* scatter with error bars                                                                     */

void svg_errbar_plot(rbuf *b, const char *title, const char *xlabel, const char *ylabel,
                     const svg_point *p, int n, int zero_line, int width, int height) {
    axes a;
    a.px0 = 62;
    a.px1 = width - 16;
    a.py0 = 28;
    a.py1 = height - 40;
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    int any = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(p[i].x) || !isfinite(p[i].y)) continue;
        any = 1;
        double h = isfinite(p[i].half) ? fabs(p[i].half) : 0;
        xlo = fmin(xlo, p[i].x), xhi = fmax(xhi, p[i].x);
        ylo = fmin(ylo, p[i].y - h), yhi = fmax(yhi, p[i].y + h);
    }
    if (!any) xlo = 0, xhi = 1, ylo = -1, yhi = 1;
    if (zero_line) ylo = fmin(ylo, 0), yhi = fmax(yhi, 0);
    /* room around the points for their labels */
    double xpad = xhi > xlo ? 0.08 * (xhi - xlo) : fmax(0.1 * fabs(xlo), 0.05);
    double ypad = yhi > ylo ? 0.05 * (yhi - ylo) : 0;
    axes_set(&a, xlo - xpad, xhi + xpad, ylo - ypad, yhi + ypad);
    svg_open(b, title, width, height);
    axes_draw(b, &a, xlabel, ylabel);
    if (zero_line && a.y0 <= 0 && a.y1 >= 0) {
        double y = ax_y(&a, 0);
        rbuf_printf(b,
                    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" "
                    "stroke-dasharray=\"5 4\"/>\n",
                    a.px0, y, a.px1, y);
    }
    if (!any)
        rbuf_printf(b,
                    "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#888\" "
                    "text-anchor=\"middle\">n/a</text>\n",
                    0.5 * (a.px0 + a.px1), 0.5 * (a.py0 + a.py1));
    for (int i = 0; i < n; i++) {
        if (!isfinite(p[i].x) || !isfinite(p[i].y)) continue;
        double x = ax_x(&a, p[i].x), y = ax_y(&a, p[i].y);
        if (isfinite(p[i].half)) {
            double h = fabs(p[i].half);
            double ya = ax_y(&a, p[i].y + h), yb = ax_y(&a, p[i].y - h);
            rbuf_printf(b,
                        "<g stroke=\"#1f77b4\" stroke-width=\"1.3\"><line x1=\"%.1f\" "
                        "y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/><line x1=\"%.1f\" y1=\"%.1f\" "
                        "x2=\"%.1f\" y2=\"%.1f\"/><line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
                        "y2=\"%.1f\"/></g>",
                        x, ya, x, yb, x - 4, ya, x + 4, ya, x - 4, yb, x + 4, yb);
        }
        rbuf_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"#1f77b4\"/>", x, y);
        if (p[i].label) {
            int right = x > a.px1 - 90; /* label left of the point near the edge */
            rbuf_printf(b,
                        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"%s\">",
                        right ? x - 7 : x + 7, y - 6, right ? "end" : "start");
            rbuf_html(b, p[i].label);
            rbuf_puts(b, "</text>");
        }
        rbuf_puts(b, "\n");
    }
    rbuf_puts(b, "</svg>\n");
}
