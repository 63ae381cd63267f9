/* tfevents.h -- TensorBoard event files (`mapo train --report_to tensorboard`).
 *
 * tfevents_open creates <logdir>/events.out.tfevents.<unix time>.<hostname>.<pid>.<n>, the
 * name torch.utils.tensorboard's SummaryWriter gives its files (n counts the writers this
 * process opened, from 0), creating logdir (and its parents) if needed and never replacing
 * an existing file. Its first record is Event{wall_time, file_version "brain.Event:2",
 * source_metadata{writer "mapo"}}, as tensorboard's EventFileWriter writes it (writer
 * "tensorboard.summary.writer.event_file_writer" there).
 *
 * Every record is TFRecord framing -- uint64 length (little-endian), masked CRC32C of those
 * 8 bytes, the serialized Event, masked CRC32C of the Event -- and the Events are encoded as
 * tensorboard's protobuf runtime encodes them (fields in number order, proto3 zero defaults
 * left out), so the bytes equal those of tensorboard's RecordWriter for the same Events
 * (tests/test_tfevents.c against tools/make_tfevents_fixtures.py).
 *
 * Writes: each record goes to the file with one write (no buffering in the process), so a
 * record is in the file when its call returns and a crash loses nothing already logged. A
 * failed write is undone (the file is truncated back to its last whole record) so the file
 * stays readable; the call returns -1 after one mapo_error line naming the file, the tag and
 * the step, and later calls may succeed (a full disk that gets space again). If the partial
 * record cannot be removed, every later write is refused. tfevents_flush makes what was
 * written durable (fsync); tfevents_close does too.
 *
 * Tags must be non-empty valid UTF-8 (protobuf refuses to parse a string field that is not).
 * All int functions return 0 on success and -1 after mapo_error(). */
#ifndef MAPO_TFEVENTS_H
#define MAPO_TFEVENTS_H
#include <stddef.h>
#include <stdint.h>

typedef struct tfevents_writer tfevents_writer;

/* wall_time: 0 = the real clock (seconds since the epoch) at each record; anything else is
 * used for every record (deterministic bytes for tests). NULL after mapo_error(). */
tfevents_writer *tfevents_open(const char *logdir, double wall_time);
/* Path of the event file (owned by the writer). */
const char *tfevents_path(const tfevents_writer *w);

/* Summary.Value{tag, simple_value}: value is stored as float32 (round to nearest), which is
 * what TensorBoard shows; NaN and infinities are written as they are. */
int tfevents_scalar(tfevents_writer *w, const char *tag, int64_t step, double value);
/* Summary.Value{tag, image{height, width, colorspace = channels, PNG}}: pixels are
 * [height][width][channels] 8-bit, channels 1 (gray), 2 (gray + alpha), 3 (RGB) or
 * 4 (RGBA), encoded as PNG with image_encode_png_channels. */
int tfevents_image(tfevents_writer *w, const char *tag, int64_t step, int width, int height,
                   int channels, const uint8_t *pixels);

/* fsync the file. */
int tfevents_flush(tfevents_writer *w);
/* fsync, close and free (w may be NULL); -1 when the fsync or close failed. */
int tfevents_close(tfevents_writer *w);

/* CRC-32C (Castagnoli, reflected 0x82F63B78; crc32c("123456789") = 0xE3069283) and the
 * TFRecord mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8. */
uint32_t tfevents_crc32c(const void *data, size_t n);
uint32_t tfevents_masked_crc32c(const void *data, size_t n);

#endif
