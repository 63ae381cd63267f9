/* objectives.h -- preference objectives as pure functions of per-sample errors.
 * l[2B]: per-sample mean squared errors, chosen half first (l_w = l[0..B), l_l = l[B..2B)).
 * dl[2B] receives d loss / d l_i. Everything is computed in double.
 * Each returns 0, or -1 (with mapo_error) if an input or the result is not finite. */
#ifndef MAPO_OBJECTIVES_H
#define MAPO_OBJECTIVES_H

typedef enum { OBJ_MAPO = 0, OBJ_DPO, OBJ_SFT } objective_kind;

typedef struct {
    double loss;
    double err_w, err_l;         /* mean l_w, mean l_l (model_losses_w / _l) */
    double margin;               /* MaPO: "OR loss" = -beta*mean(logsigmoid(T*log_odds));
                                    DPO: mean of inside term; SFT: err_l - err_w */
    double win_score, lose_score;/* MaPO: mean g(l_w), mean g(l_l) */
    double implicit_acc;         /* DPO: fraction with inside > 0;
                                    MaPO: fraction with g(l_w) > g(l_l), i.e. l_w < l_l */
    double ref_err_w, ref_err_l; /* DPO: mean reference errors */
} objective_stats;

/* stable helpers, exposed for tests */
double mapo_g(double s, double l);        /* s*l/(exp(s*l)-1), g(0)=1 */
double mapo_g_deriv(double s, double l);  /* d g / d l */
double mapo_logsigmoid(double x);

/* MaPO (official code): g(l) = s*l/(expm1(s*l));  log_odds = g(l_w) - g(l_l)
   loss = mean(l_w) - beta_mapo * mean(logsigmoid(T * log_odds)) */
int objective_mapo(double *dl, objective_stats *st, const double *l, int B,
                   double beta_mapo, double snr_value, int num_train_timesteps);
/* Diffusion-DPO: inside = -0.5*beta*((l_w - l_l) - (lref_w - lref_l));
   loss = -mean(logsigmoid(inside)) */
int objective_dpo(double *dl, objective_stats *st, const double *l, const double *lref,
                  int B, double beta_dpo);
/* SFT: loss = mean(l_w); d/dl_l = 0 */
int objective_sft(double *dl, objective_stats *st, const double *l, int B);

/* Plain denoising loss on n single images (pretraining, SFT on an images-only file):
   loss = mean(l_i), dl_i = 1/n; err_w = loss, err_l = margin = 0. */
int objective_denoise(double *dl, objective_stats *st, const double *l, int n);

#endif
