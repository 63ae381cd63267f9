/* tokenizer.h -- CLIP byte-level BPE tokenizer, giving the ids of transformers 5.x
 * CLIPTokenizer as diffusers pipelines call it:
 *     tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
 * = bos + BPE tokens (truncated to max_length - 2) + eos + pad..., from a pipeline folder's
 * tokenizer/ or tokenizer_2/: vocab.json + merges.txt (as published on the Hub) or
 * tokenizer.json (as transformers 5.x save_pretrained writes it; preferred when present, as
 * transformers does), with tokenizer_config.json and special_tokens_map.json.
 *
 * What is matched (transformers 5.x CLIPTokenizer is backed by the Rust `tokenizers` library;
 * it has no ftfy step, whether ftfy is installed or not):
 *   1. the prompt's UTF-8 is decoded as Python's bytes.decode("utf-8", errors="replace") does:
 *      each maximal invalid subsequence becomes one U+FFFD (so invalid bytes never fail);
 *   2. special tokens (bos/eos/unk/pad and added_tokens_decoder entries) are cut out of the
 *      text first: those with normalized=false on the raw text, the others after step 3 on
 *      each remaining piece. Their flags come from the config files as transformers 5.x
 *      resolves them: e.g. SDXL's tokenizer_2 pads with "!", a special token, so every "!" in
 *      a prompt becomes id 0 there (never "!</w>" or a merged "!!"), and "<|endoftext|>"
 *      typed in a prompt is the eos id;
 *   3. normalisation: NFC (Unicode 9.0 data, as tokenizers has), every run of white space
 *      (\s) replaced by one " ", then per-code-point lowercase (U+0130 -> "i\u0307"; no
 *      final-sigma rule);
 *   4. the CLIP pre-tokenizer regex <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 *      [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ (Unicode 16.0 classes), white space dropped; a literal
 *      "<|endoftext|>" that reaches this step is split like GPT-2's byte-level regex does;
 *   5. bytes -> bytes_to_unicode characters, "</w>" appended to the last one, BPE by merge
 *      rank (lowest first, leftmost on ties), tokens -> ids from vocab.json.
 * NOT matched: transformers 4.x's slow CLIPTokenizer with ftfy (ftfy.fix_text, which also
 * un-escapes HTML entities and repairs mojibake) and open_clip's tokenizer (ftfy +
 * html.unescape twice): "&amp;" and mojibake stay as typed here, as in transformers 5.x.
 */
#ifndef MAPO_TOKENIZER_H
#define MAPO_TOKENIZER_H
#include <stdint.h>

typedef struct clip_tokenizer clip_tokenizer;

/* Load from a folder holding tokenizer.json, or else vocab.json and merges.txt (required), and
 * tokenizer_config.json / special_tokens_map.json (optional; defaults are CLIPTokenizer's:
 * bos "<|startoftext|>", eos = pad = unk = "<|endoftext|>", model_max_length 77 -- where
 * transformers would have no length limit). Only the vocabulary, merges and added tokens are
 * read from tokenizer.json: like transformers' CLIPTokenizer class, the normalizer and
 * pre-tokenizer are always CLIP's. Returns 0, or -1 with mapo_error (missing or broken file,
 * merges naming tokens not in the vocabulary, special tokens not in the vocabulary or with
 * another id, unsupported lstrip/rstrip/single_word flags, more than 64 added tokens). */
int clip_tokenizer_load(clip_tokenizer **t, const char *dir);
/* Same with the vocabulary files named separately; config_dir (may be NULL: defaults) holds
 * the two JSON configs. Lets several configs share one vocab.json / merges.txt. */
int clip_tokenizer_load_files(clip_tokenizer **t, const char *vocab_json, const char *merges_txt,
                              const char *config_dir);
void clip_tokenizer_free(clip_tokenizer *t);

/* Tokenize a NUL-terminated UTF-8 prompt into ids[max_len] (max_len >= 2): bos, the first
 * max_len - 2 tokens, eos, then pad up to max_len. Returns the number of tokens before
 * truncation with bos and eos (> max_len means the prompt was truncated, as diffusers warns),
 * or -1 on error (NULL arguments, max_len < 2, a prompt over 16 MiB). */
int clip_tokenize(const clip_tokenizer *t, const char *text, int32_t *ids, int max_len);

int clip_tokenizer_max_length(const clip_tokenizer *t); /* model_max_length (77) */
int clip_tokenizer_bos_id(const clip_tokenizer *t);
int clip_tokenizer_eos_id(const clip_tokenizer *t);
int clip_tokenizer_pad_id(const clip_tokenizer *t);
int clip_tokenizer_vocab_size(const clip_tokenizer *t); /* largest id + 1 */

/* GPT-2's bytes_to_unicode character of byte b (0..255) as UTF-8 in out (NUL-terminated):
   the alphabet of a byte-level vocabulary. Returns out. */
const char *clip_byte_to_unicode(int b, char out[5]);

#endif
