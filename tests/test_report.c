/* test_report.c -- `mapo report` (report.h) on tests/fixtures/report, a fake study:
 * 2 tasks (style-1.00, safety) x 3 methods (mapo, dpo, sft) x 3 seeds of selected test runs,
 * plus 5 val runs per task; seed-0 runs carry an 8x8 grid and a 4-line train_log.jsonl.
 * Checked:
 *   - every src="..." / href="..." of index.html is a file inside OUT (no URL, no absolute
 *     path, no JavaScript), and the copied PNGs are byte-identical to the fixture's;
 *   - summary.json against numbers computed here by hand from the fixture's values: means,
 *     95% half-widths with t(0.975, 2) = 4.302652729749464 and t(0.975, 1) =
 *     12.706204736174707 (scipy.stats.t.ppf), the per-seed MaPO - DPO gain, best / chosen beta,
 *     missing values as null;
 *   - HTML escaping of the title, a description and a note (with <&>, quotes, <script>);
 *   - summary.md tables and the --md_prefix image links;
 *   - errors: malformed result.json, missing log, missing key, wrong type, bad log lines,
 *     a non-PNG grid, a duplicate selected run, an unknown task, no study.json -- each one
 *     message naming the file and key, and OUT not created;
 *   - optional fields removed -> n/a / null, the report still builds;
 *   - the tick helper of the SVG plots. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/report.h"
#include "testutil.h"

#define FIX "tests/fixtures/report"
#define T975_2 4.302652729749464
#define T975_1 12.706204736174707

/* ------------------------------------------------------------------ helpers */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)n + 1);
    size_t got = fread(b, 1, (size_t)n, f);
    fclose(f);
    b[got] = 0;
    if (len) *len = got;
    return b;
}

static void spit(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static void copy_tree(const char *src, const char *dst) {
    if (mkdir(dst, 0777) && errno != EEXIST) fail_msg("mkdir %s", dst);
    DIR *d = opendir(src);
    if (!d) fail_msg("opendir %s", src);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char s[1024], t[1024];
        snprintf(s, sizeof s, "%s/%s", src, e->d_name);
        snprintf(t, sizeof t, "%s/%s", dst, e->d_name);
        if (mapo_is_dir(s)) {
            copy_tree(s, t);
        } else {
            size_t n = 0;
            char *b = slurp(s, &n);
            if (!b) fail_msg("read %s", s);
            FILE *f = fopen(t, "wb");
            if (!f || fwrite(b, 1, n, f) != n) fail_msg("write %s", t);
            fclose(f);
            free(b);
        }
    }
    closedir(d);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}
static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* replace the first occurrence of `old` in a file (it must be there) */
static void edit_file(const char *path, const char *old, const char *new_) {
    char *b = slurp(path, NULL);
    if (!b) fail_msg("read %s", path);
    char *at = strstr(b, old);
    if (!at) fail_msg("'%s' not in %s", old, path);
    size_t lo = strlen(old), ln = strlen(new_), lb = strlen(b);
    char *o = malloc(lb - lo + ln + 1);
    memcpy(o, b, (size_t)(at - b));
    memcpy(o + (at - b), new_, ln);
    memcpy(o + (at - b) + ln, at + lo, lb - (size_t)(at - b) - lo + 1);
    spit(path, o);
    free(o);
    free(b);
}

typedef struct {
    char root[64];
    char study[128];
    char out[160];
} tmp_t;

/* a fresh temp folder with a copy of the fixture study in root/study; out = root/a/report */
static void tmp_make(tmp_t *t) {
    strcpy(t->root, "/tmp/mapo_report_XXXXXX");
    if (!mkdtemp(t->root)) fail_msg("mkdtemp");
    snprintf(t->study, sizeof t->study, "%s/study", t->root);
    snprintf(t->out, sizeof t->out, "%s/a/report", t->root);
    copy_tree(FIX, t->study);
}

static int build(const char *study, const char *out, const char *prefix) {
    report_opts o = {study, out, prefix};
    return report_build(&o);
}

/* report_build fails with a message containing each of the given parts; OUT not created */
static void expect_fail(tmp_t *t, const char *a, const char *b, const char *c) {
    int rc = build(t->study, t->out, NULL);
    const char *m = mapo_last_error();
    if (rc != -1) fail_msg("report_build succeeded, expected an error with '%s'", a);
    if (a && !strstr(m, a)) fail_msg("message lacks '%s': %s", a, m);
    if (b && !strstr(m, b)) fail_msg("message lacks '%s': %s", b, m);
    if (c && !strstr(m, c)) fail_msg("message lacks '%s': %s", c, m);
    assert_false(mapo_is_dir(t->out));
}

static double jd(json_t *root, const char *path) {
    /* a dotted path; numeric segments index arrays */
    json_t *cur = root;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, ".")) {
        if (json_is_array(cur)) cur = json_array_get(cur, (size_t)atoi(tok));
        else cur = json_object_get(cur, tok);
        if (!cur) fail_msg("summary.json lacks %s", path);
    }
    if (json_is_null(cur)) return NAN;
    if (!json_is_number(cur)) fail_msg("summary.json %s is not a number", path);
    return json_number_value(cur);
}

static void check_close(const char *what, double got, double want) {
    if (isnan(want) && isnan(got)) return;
    if (!(fabs(got - want) <= 1e-12 * fmax(1, fabs(want))))
        fail_msg("%s: got %.17g, want %.17g", what, got, want);
}

/* mean and t half-width by hand (n = 2 or 3) */
static void by_hand(const double *x, int n, double *mean, double *half) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    double m = s / n, ss = 0;
    for (int i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
    double sd = sqrt(ss / (n - 1));
    *mean = m;
    *half = (n == 3 ? T975_2 : T975_1) * sd / sqrt((double)n);
}

/* ------------------------------------------------------------------ tests */
static void test_links_and_files(void **state) {
    (void)state;
    tmp_t t;
    tmp_make(&t);
    if (build(FIX, t.out, NULL)) fail_msg("%s", mapo_last_error());
    char p[512];
    snprintf(p, sizeof p, "%s/index.html", t.out);
    char *html = slurp(p, NULL);
    assert_non_null(html);
    assert_null(strstr(html, "<script"));
    assert_null(strstr(html, "http:"));
    assert_null(strstr(html, "https:"));
    assert_null(strstr(html, "url("));
    int nfiles = 0, nanchors = 0, npng = 0;
    const char *attrs[2] = {"src=\"", "href=\""};
    for (int a = 0; a < 2; a++) {
        const char *q = html;
        while ((q = strstr(q, attrs[a]))) {
            q += strlen(attrs[a]);
            const char *e = strchr(q, '"');
            assert_non_null(e);
            char ref[256];
            snprintf(ref, sizeof ref, "%.*s", (int)(e - q), q);
            q = e;
            if (ref[0] == '#') {
                /* an anchor: its id must exist */
                char id[300];
                snprintf(id, sizeof id, "id=\"%s\"", ref + 1);
                if (!strstr(html, id)) fail_msg("anchor %s has no target", ref);
                nanchors++;
                continue;
            }
            if (strchr(ref, ':') || ref[0] == '/' || strstr(ref, ".."))
                fail_msg("reference '%s' leaves the report folder", ref);
            snprintf(p, sizeof p, "%s/%s", t.out, ref);
            if (!mapo_is_file(p)) fail_msg("index.html references '%s', not in OUT", ref);
            nfiles++;
            if (strstr(ref, ".png")) npng++;
        }
    }
    assert_int_equal(npng, 8); /* 2 tasks x (base + 3 methods) */
    assert_int_equal(nfiles, 10); /* + summary.json, summary.md */
    assert_int_equal(nanchors, 6);
    /* copies are byte-identical */
    size_t n1, n2;
    snprintf(p, sizeof p, "%s/style-1.00_base_grid.png", t.out);
    char *a = slurp(p, &n1), *b = slurp(FIX "/tasks/style-1.00/base_grid.png", &n2);
    assert_non_null(a);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
    snprintf(p, sizeof p, "%s/safety_dpo_seed0_grid.png", t.out);
    a = slurp(p, &n1);
    b = slurp(FIX "/runs/safety-dpo-s0/grid.png", &n2);
    assert_non_null(a);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
    /* the four curve plots per task and the gain plot are inline SVG */
    int nsvg = 0;
    for (const char *q = html; (q = strstr(q, "<svg ")); q++) nsvg++;
    assert_int_equal(nsvg, 2 * 4 + 1);
    /* a rerun into the same folder replaces the files */
    if (build(FIX, t.out, NULL)) fail_msg("%s", mapo_last_error());
    free(html);
    rm_rf(t.root);
}

static void test_summary_numbers(void **state) {
    (void)state;
    tmp_t t;
    tmp_make(&t);
    if (build(FIX, t.out, NULL)) fail_msg("%s", mapo_last_error());
    char p[512];
    snprintf(p, sizeof p, "%s/summary.json", t.out);
    json_error_t e;
    json_t *j = json_load_file(p, 0, &e);
    if (!j) fail_msg("summary.json: %s", e.text);
    /* the fixture's win rates (tests/fixtures/report/runs/<task>-<method>-s<seed>) */
    const double style_mapo[3] = {0.80, 0.74, 0.86}, style_dpo[3] = {0.70, 0.66, 0.71};
    const double safety_mapo[3] = {0.65, 0.70, 0.69}, safety_dpo[3] = {0.66, 0.61, 0.62};
    double m, h;
    by_hand(style_mapo, 3, &m, &h);
    check_close("style mapo win mean", jd(j, "tasks.0.methods.mapo.win_rate.mean"), m);
    check_close("style mapo win half", jd(j, "tasks.0.methods.mapo.win_rate.half"), h);
    check_close("style mapo win mean (value)", m, 0.8);
    check_close("style mapo win half (value)", h, T975_2 * 0.06 / sqrt(3.0));
    assert_int_equal((int)jd(j, "tasks.0.methods.mapo.win_rate.n"), 3);
    check_close("style mapo seed 1", jd(j, "tasks.0.methods.mapo.win_rate.values.1"), 0.74);
    by_hand(style_dpo, 3, &m, &h);
    check_close("style dpo win mean", jd(j, "tasks.0.methods.dpo.win_rate.mean"), m);
    check_close("style dpo win half", jd(j, "tasks.0.methods.dpo.win_rate.half"), h);
    by_hand(safety_mapo, 3, &m, &h);
    check_close("safety mapo win mean", jd(j, "tasks.1.methods.mapo.win_rate.mean"), m);
    check_close("safety mapo win half", jd(j, "tasks.1.methods.mapo.win_rate.half"), h);
    /* gain: per-seed differences */
    for (int k = 0; k < 2; k++) {
        const double *a = k ? safety_mapo : style_mapo, *b = k ? safety_dpo : style_dpo;
        double d[3] = {a[0] - b[0], a[1] - b[1], a[2] - b[2]};
        by_hand(d, 3, &m, &h);
        char key[64];
        snprintf(key, sizeof key, "tasks.%d.gain.mean", k);
        check_close(key, jd(j, key), m);
        snprintf(key, sizeof key, "tasks.%d.gain.half", k);
        check_close(key, jd(j, key), h);
    }
    check_close("style gain (value)", jd(j, "tasks.0.gain.mean"), (0.10 + 0.08 + 0.15) / 3);
    /* other metrics: style mapo fd 10, 10.5, 11; style sft peak RSS 540, 550, 560 */
    const double fd[3] = {10, 10.5, 11}, rss[3] = {540, 550, 560};
    by_hand(fd, 3, &m, &h);
    check_close("fd mean", jd(j, "tasks.0.methods.mapo.fd.mean"), m);
    check_close("fd half", jd(j, "tasks.0.methods.mapo.fd.half"), h);
    by_hand(rss, 3, &m, &h);
    check_close("rss mean", jd(j, "tasks.0.methods.sft.peak_rss_mb.mean"), m);
    check_close("rss half", jd(j, "tasks.0.methods.sft.peak_rss_mb.half"), h);
    /* safety dpo seed 2 has no pref_acc: n = 2, t(0.975, 1) */
    const double pa[2] = {0.60, 0.65};
    by_hand(pa, 2, &m, &h);
    assert_int_equal((int)jd(j, "tasks.1.methods.dpo.pref_acc.n"), 2);
    check_close("pref_acc mean n=2", jd(j, "tasks.1.methods.dpo.pref_acc.mean"), m);
    check_close("pref_acc half n=2", jd(j, "tasks.1.methods.dpo.pref_acc.half"), h);
    assert_true(isnan(jd(j, "tasks.1.methods.dpo.pref_acc.values.2")));
    /* base: safety has no fd */
    check_close("base fd", jd(j, "tasks.0.base.fd"), 14.2);
    assert_true(isnan(jd(j, "tasks.1.base.fd")));
    /* hyper-parameters: mapo chosen 0.1 = best; dpo chosen 5000, best on val 2000; sft none */
    check_close("mapo chosen beta", jd(j, "tasks.0.methods.mapo.chosen.beta"), 0.1);
    check_close("mapo best beta", jd(j, "tasks.0.methods.mapo.best_beta"), 0.1);
    check_close("dpo chosen beta", jd(j, "tasks.0.methods.dpo.chosen.beta"), 5000);
    check_close("dpo best beta", jd(j, "tasks.0.methods.dpo.best_beta"), 2000);
    check_close("dpo best val", jd(j, "tasks.0.methods.dpo.best_val_win_rate"), 0.66);
    assert_true(isnan(jd(j, "tasks.1.methods.sft.best_beta")));
    check_close("sft chosen lr", jd(j, "tasks.1.methods.sft.chosen.lr"), 1e-4);
    json_decref(j);

    /* the same numbers, rounded, in the HTML and markdown tables */
    snprintf(p, sizeof p, "%s/index.html", t.out);
    char *html = slurp(p, NULL);
    snprintf(p, sizeof p, "%s/summary.md", t.out);
    char *md = slurp(p, NULL);
    assert_non_null(strstr(html, "<b>0.800 \xc2\xb1 0.149</b>"));
    assert_non_null(strstr(md, "| MaPO | 3 | 0.800 \xc2\xb1 0.149 |"));
    assert_non_null(strstr(html, "0.625 \xc2\xb1 0.318 (n=2)"));
    assert_non_null(strstr(md, "| style-1.00 | 0.41 | 0.110 \xc2\xb1 0.090 | 3 |"));
    assert_non_null(strstr(md, "(report/style-1.00_mapo_seed0_grid.png)"));
    assert_non_null(strstr(html, "<td class=\"na\">n/a</td>")); /* safety base fd */
    free(html);
    free(md);
    /* --md_prefix */
    if (build(FIX, t.out, "docs/img/")) fail_msg("%s", mapo_last_error());
    md = slurp(p, NULL);
    assert_non_null(strstr(md, "![base](docs/img/safety_base_grid.png)"));
    assert_null(strstr(md, "(report/"));
    free(md);
    rm_rf(t.root);
}

static void test_escaping(void **state) {
    (void)state;
    tmp_t t;
    tmp_make(&t);
    if (build(FIX, t.out, NULL)) fail_msg("%s", mapo_last_error());
    char p[512];
    snprintf(p, sizeof p, "%s/index.html", t.out);
    char *html = slurp(p, NULL);
    assert_non_null(strstr(html, "<h1>Fixture study &lt;&amp;&gt; &quot;quoted&quot;</h1>"));
    assert_non_null(strstr(html, "<title>Fixture study &lt;&amp;&gt; &quot;quoted&quot;</title>"));
    assert_null(strstr(html, "<&>"));
    assert_null(strstr(html, "\"quoted\""));
    assert_non_null(strstr(html, "Striped style &lt;b&gt;at&lt;/b&gt; full strength &amp; more"));
    assert_non_null(strstr(html, "<li>Note with &lt;script&gt;alert(1)&lt;/script&gt;</li>"));
    free(html);
    snprintf(p, sizeof p, "%s/summary.md", t.out);
    char *md = slurp(p, NULL);
    assert_non_null(strstr(md, "# Fixture study &lt;&amp;&gt; \"quoted\""));
    assert_null(strstr(md, "<script"));
    free(md);
    /* a task name with markup: escaped in HTML and SVG labels, file names sanitised */
    char sj[256];
    snprintf(sj, sizeof sj, "%s/study.json", t.study);
    edit_file(sj, "\"name\": \"safety\"", "\"name\": \"s<a>&'f\\\"e\"");
    DIR *d;
    char rd[256];
    snprintf(rd, sizeof rd, "%s/runs", t.study);
    d = opendir(rd);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "safety-", 7)) {
            char rj[600];
            snprintf(rj, sizeof rj, "%s/%s/result.json", rd, e->d_name);
            edit_file(rj, "\"task\":\"safety\"", "\"task\":\"s<a>&'f\\\"e\"");
        }
    closedir(d);
    if (build(t.study, t.out, NULL)) fail_msg("%s", mapo_last_error());
    snprintf(p, sizeof p, "%s/index.html", t.out);
    html = slurp(p, NULL);
    assert_null(strstr(html, "s<a>"));
    assert_non_null(strstr(html, "<h3 id=\"task-1\">s&lt;a&gt;&amp;&#39;f&quot;e</h3>"));
    /* the gain plot labels the point with the escaped name */
    assert_non_null(strstr(html, ">s&lt;a&gt;&amp;&#39;f&quot;e</text>"));
    assert_non_null(strstr(html, "src=\"s_a___f_e_base_grid.png\""));
    snprintf(p, sizeof p, "%s/s_a___f_e_base_grid.png", t.out);
    assert_true(mapo_is_file(p));
    free(html);
    /* the buffer helper itself */
    rbuf b = {0};
    rbuf_html(&b, "<&>\"'x");
    rbuf_html(&b, NULL);
    assert_string_equal(b.s, "&lt;&amp;&gt;&quot;&#39;xn/a");
    rbuf_free(&b);
    rm_rf(t.root);
}

static void test_errors(void **state) {
    (void)state;
    tmp_t t;
    char f[512];

    /* malformed result.json */
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/runs/style-1.00-mapo-s1/result.json", t.study);
    spit(f, "{\"task\": \"style-1.00\", \"method\": ");
    expect_fail(&t, "runs/style-1.00-mapo-s1/result.json", "malformed JSON", "line 1");
    rm_rf(t.root);

    /* a log named by a result is missing */
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/runs/style-1.00-dpo-s0/train_log.jsonl", t.study);
    assert_int_equal(unlink(f), 0);
    expect_fail(&t, "runs/style-1.00-dpo-s0/train_log.jsonl: file not found",
                "key 'train.log'", "style-1.00-dpo-s0/result.json");
    rm_rf(t.root);

    /* a missing required key, a value of the wrong type */
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/runs/safety-sft-s2/result.json", t.study);
    edit_file(f, "\"split\":\"test\",", "");
    expect_fail(&t, "safety-sft-s2/result.json", "missing key 'split'", NULL);
    rm_rf(t.root);
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/runs/safety-sft-s2/result.json", t.study);
    edit_file(f, "\"rate\":0.52", "\"rate\":\"high\"");
    expect_fail(&t, "safety-sft-s2/result.json", "key 'eval.win_rate.rate' must be a number",
                NULL);
    rm_rf(t.root);
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/study.json", t.study);
    edit_file(f, "\"mismatch\": 0.12", "\"mismatch\": \"low\"");
    expect_fail(&t, "study.json", "key 'tasks[1].mismatch' must be a number", NULL);
    rm_rf(t.root);

    /* bad log lines: malformed, no step */
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/runs/safety-mapo-s0/train_log.jsonl", t.study);
    FILE *fp = fopen(f, "a");
    fputs("{\"step\": 5, \"loss\": \n", fp);
    fclose(fp);
    expect_fail(&t, "safety-mapo-s0/train_log.jsonl: line 5", "malformed JSON", NULL);
    rm_rf(t.root);
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/runs/safety-mapo-s0/train_log.jsonl", t.study);
    edit_file(f, "\"step\": 2, ", "");
    expect_fail(&t, "safety-mapo-s0/train_log.jsonl: line 2", "missing key 'step'", NULL);
    rm_rf(t.root);

    /* a grid that is not a PNG */
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/tasks/safety/base_grid.png", t.study);
    spit(f, "not a png at all, just some text");
    expect_fail(&t, "tasks/safety/base_grid.png: not a PNG", "tasks[1].base.grid", NULL);
    rm_rf(t.root);

    /* two selected test runs for one task x method x seed */
    tmp_make(&t);
    char src[512], dst[512];
    snprintf(src, sizeof src, "%s/runs/safety-sft-s1", t.study);
    snprintf(dst, sizeof dst, "%s/runs/safety-sft-s1-again", t.study);
    copy_tree(src, dst);
    expect_fail(&t, "two selected test runs", "safety-sft-s1-again/result.json", "seed 1");
    rm_rf(t.root);

    /* a run of a task the study does not list; a seed it does not list */
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/runs/safety-sft-s1/result.json", t.study);
    edit_file(f, "\"task\":\"safety\"", "\"task\":\"safety-2\"");
    expect_fail(&t, "safety-sft-s1/result.json", "key 'task': 'safety-2' is not a task", NULL);
    rm_rf(t.root);
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/runs/safety-sft-s1/result.json", t.study);
    edit_file(f, "\"seed\":1", "\"seed\":7");
    expect_fail(&t, "safety-sft-s1/result.json", "key 'seed': 7 is not listed", NULL);
    rm_rf(t.root);

    /* no study.json; malformed study.json; no study folder */
    tmp_make(&t);
    snprintf(f, sizeof f, "%s/study.json", t.study);
    assert_int_equal(unlink(f), 0);
    expect_fail(&t, "study/study.json: required file not found", NULL, NULL);
    spit(f, "{\"title\": \"x\",, }");
    expect_fail(&t, "study/study.json: malformed JSON", NULL, NULL);
    spit(f, "{\"title\": \"x\", \"seeds\": [0], \"tasks\": [{\"name\": \"a\"}]}");
    expect_fail(&t, "study/study.json: missing key 'methods'", NULL, NULL);
    rm_rf(t.root);
    report_opts o = {"tests/fixtures/report/no-such-folder", "/tmp/never", NULL};
    assert_int_equal(report_build(&o), -1);
    assert_non_null(strstr(mapo_last_error(), "no-such-folder: study folder not found"));
}

static void test_optional_missing(void **state) {
    (void)state;
    tmp_t t;
    tmp_make(&t);
    char f[512];
    snprintf(f, sizeof f, "%s/study.json", t.study);
    edit_file(f, "\"title\": \"Fixture study <&> \\\"quoted\\\"\",", "");
    edit_file(f, "\"mismatch\": 0.12,", "");
    edit_file(f, "\"task_metric\": \"mark rate\",", "");
    edit_file(f, "\"grid\": \"tasks/safety/base_grid.png\"", "\"grid\": null");
    /* one run without an eval.fd, one without train (no log, no timing) */
    snprintf(f, sizeof f, "%s/runs/style-1.00-sft-s0/result.json", t.study);
    edit_file(f, "\"fd\":12.0,", "");
    snprintf(f, sizeof f, "%s/runs/style-1.00-mapo-s0/result.json", t.study);
    edit_file(f, "\"train\":", "\"train_old\":");
    if (build(t.study, t.out, NULL)) fail_msg("%s", mapo_last_error());
    snprintf(f, sizeof f, "%s/summary.json", t.out);
    json_t *j = json_load_file(f, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "title")), "mapo study");
    assert_true(isnan(jd(j, "tasks.1.mismatch")));
    assert_int_equal((int)jd(j, "tasks.0.methods.sft.fd.n"), 2);
    assert_int_equal((int)jd(j, "tasks.0.methods.mapo.sec_per_step.n"), 2);
    json_decref(j);
    snprintf(f, sizeof f, "%s/index.html", t.out);
    char *html = slurp(f, NULL);
    assert_non_null(strstr(html, "<h1>mapo study</h1>"));
    assert_non_null(strstr(html, "<th>task rate ↓</th>"));
    assert_non_null(strstr(html, "MaPO (n/a)")); /* its curve is missing from the legend */
    assert_null(strstr(html, "safety_base_grid.png"));
    free(html);
    rm_rf(t.root);
}

static void test_ticks(void **state) {
    (void)state;
    double t0, st;
    int n;
    svg_nice_ticks(0.13, 0.87, 4, &t0, &st, &n);
    check_close("t0", t0, 0);
    check_close("step", st, 0.2);
    assert_int_equal(n, 6);
    svg_nice_ticks(1, 4, 5, &t0, &st, &n); /* 3 / 5 = 0.6 -> 1 */
    check_close("t0", t0, 1);
    check_close("step", st, 1);
    assert_int_equal(n, 4);
    svg_nice_ticks(0, 1000, 4, &t0, &st, &n); /* 250 -> 500 */
    check_close("step", st, 500);
    assert_int_equal(n, 3);
    svg_nice_ticks(-0.08, 0.2, 4, &t0, &st, &n);
    assert_true(t0 <= -0.08 && t0 + (n - 1) * st >= 0.2);
    svg_nice_ticks(3, 3, 4, &t0, &st, &n); /* a flat range is widened */
    assert_true(t0 < 3 && t0 + (n - 1) * st > 3 && n >= 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_links_and_files),  cmocka_unit_test(test_summary_numbers),
        cmocka_unit_test(test_escaping),         cmocka_unit_test(test_errors),
        cmocka_unit_test(test_optional_missing), cmocka_unit_test(test_ticks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
