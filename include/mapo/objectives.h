/* objectives.h -- preference objectives as pure functions of per-sample errors.
 * l[2B]: per-sample mean squared errors, chosen half first (l_w = l[0..B), l_l = l[B..2B)),
 * except for objective_kto and objective_denoise, which take n examples in any order.
 * dl[2B] receives d loss / d l_i. Everything is computed in double.
 * Each returns 0, or -1 (with mapo_error) if an input or the result is not finite. */
#ifndef MAPO_OBJECTIVES_H
#define MAPO_OBJECTIVES_H

typedef enum { OBJ_MAPO = 0, OBJ_DPO, OBJ_SFT, OBJ_KTO } objective_kind;

typedef struct {
    double loss;
    double err_w, err_l;         /* mean l_w, mean l_l (model_losses_w / _l);
                                    KTO: of the desirable / undesirable examples */
    double margin;               /* MaPO: "OR loss" = -beta*mean(logsigmoid(T*log_odds));
                                    DPO: mean of inside term; SFT: err_l - err_w;
                                    KTO: kl = max(0, mean(lref - l)) */
    double win_score, lose_score;/* MaPO: mean g(l_w), mean g(l_l);
                                    KTO: diff_pos, diff_neg */
    double implicit_acc;         /* DPO: fraction with inside > 0;
                                    MaPO: fraction with g(l_w) > g(l_l), i.e. l_w < l_l;
                                    KTO: fraction with z > 0 */
    double ref_err_w, ref_err_l; /* DPO, KTO: mean reference errors */
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

/* Diffusion-KTO (the official train_kto_sd_v1.5.py, --loss kto --halo sigmoid) on n
   labelled examples, in any order: labels[i] = 1 for a desirable image, 0 for an
   undesirable one (any non-zero byte counts as 1). With the per-sample errors l and the
   reference model's errors lref (the log-likelihoods being -l and -lref):
     g_i  = lref_i - l_i                        how much better the policy fits than the reference
     kl   = max(0, mean_i g_i)                  a constant: no gradient flows through it
     z_i  = (2 y_i - 1) * beta * (g_i - kl)     beta: the script's --beta_dpo (1000)
     loss = mean_i w_i * (1 - sigmoid(z_i))     w_i = lambda_d if desirable else lambda_u
   dl_i = d loss / d l_i = w_i * (2 y_i - 1) * beta * sigmoid(z_i) * sigmoid(-z_i) / n, with
   kl held fixed as the script's detach does; 1 - sigmoid(z) is evaluated as sigmoid(-z), so
   nothing overflows or cancels for large |z|. Statistics: err_w / err_l and ref_err_w /
   ref_err_l are the mean policy / reference errors of the desirable / undesirable examples
   (0 where there are none); margin = kl; win_score / lose_score = the script's diff_pos /
   diff_neg, the mean of g_i - kl over the desirable / undesirable examples (0 where there
   are none; the script divides by count + 1e-6); implicit_acc = the script's acc, the
   fraction of examples with z_i > 0. */
int objective_kto(double *dl, objective_stats *st, const double *l, const double *lref,
                  const unsigned char *labels, int n, double beta, double lambda_d,
                  double lambda_u);

/* Plain denoising loss on n single images (pretraining, SFT on an images-only file):
   loss = mean(l_i), dl_i = 1/n; err_w = loss, err_l = margin = 0. */
int objective_denoise(double *dl, objective_stats *st, const double *l, int n);

#endif
