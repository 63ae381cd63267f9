/* bf16.h -- float32 -> bfloat16 bits, round to nearest even, as torch's .bfloat16() (a NaN
 * becomes the quiet NaN 0x7fc0). Inline: the bf16 engine rounds every operand with it in
 * vectorised loops; safetensors' writer uses the same function for bf16 files. */
#ifndef MAPO_BF16_H
#define MAPO_BF16_H
#include <stdint.h>
#include <string.h>

static inline uint16_t mapo_bf16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
#endif
