/* kernels.c -- instantiates kernels.inc for float and for double (see ops.h). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ops.h"

#define REAL float
#define SFX
#define GEMM cblas_sgemm
#define EXP expf
#define ERF erff
#define SIN sinf
#define COS cosf
#include "kernels.inc"
#undef REAL
#undef SFX
#undef GEMM
#undef EXP
#undef ERF
#undef SIN
#undef COS

#define REAL double
#define SFX _f64
#define GEMM cblas_dgemm
#define EXP exp
#define ERF erf
#define SIN sin
#define COS cos
#include "kernels.inc"
