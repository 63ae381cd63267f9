/* cmds.h -- subcommands. Each returns 0 on success, 1 after printing --help, -1 on error
 * (message in mapo_last_error, printed by main). */
#ifndef MAPO_CLI_CMDS_H
#define MAPO_CLI_CMDS_H
int cmd_train(int argc, char **argv);
int cmd_debug_step(int argc, char **argv);
int cmd_init_unet(int argc, char **argv);
int cmd_make_pairs(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_cache(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_init_pixel_pipeline(int argc, char **argv);
int cmd_fmnist_data(int argc, char **argv);
int cmd_fmnist_evaluators(int argc, char **argv);
int cmd_fmnist_pairs(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_report(int argc, char **argv);
#endif
