/* curves.h -- training curves of any run: a train_log.jsonl (one JSON object per step, as
 * `mapo train` writes it) -> a self-contained HTML page of inline SVG plots (loss, the chosen
 * and rejected denoising errors, their margin, MaPO's win / lose scores, gradient norm, LR). */
#ifndef MAPO_CURVES_H
#define MAPO_CURVES_H

/* Lines without a numeric "step" are an error naming the line; keys absent from every line are
 * left out of the page. Written atomically. */
int curves_write(const char *log_path, const char *html_path, const char *title);

#endif
