/*
 * render_host: a test host for libdistill, run by tests/test_c_library.py. It plays one live
 * session as an audio callback would: render calls of random sizes (1..max_frames), paced in
 * real time, a slider change at a given time, then stop, and it writes what it rendered as
 * interleaved float32 to a file. It prints `key value` lines: the session's latency and status,
 * when the slider change was heard, and (built with COUNT_CALLS) the allocations and mutex locks that
 * happened inside distill_render on the calling thread, counted by interposing malloc and
 * pthread_mutex_lock.
 *
 *   render_host --server H:P --rate R --channels C --seconds S --seed N [--slider-at T]
 *               [--max-frames M] [--interleaved 1] [--token T] -o out.f32
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "distill.h"
#include "pacing.h"

#ifdef COUNT_CALLS
/* Counted only while in_render is set on this thread. */
static __thread int in_render;
static __thread long allocations, locks;
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
void *malloc(size_t n) { if (in_render) ++allocations; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { if (in_render) ++allocations; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { if (in_render) ++allocations; return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { if (in_render) ++allocations; return __libc_memalign(a, n); }
int posix_memalign(void **p, size_t a, size_t n) {
  if (in_render) ++allocations;
  *p = __libc_memalign(a, n);
  return *p ? 0 : 12;
}
void *aligned_alloc(size_t a, size_t n) { if (in_render) ++allocations; return __libc_memalign(a, n); }
void free(void *p) { if (in_render && p) ++allocations; __libc_free(p); }
static int (*real_lock)(pthread_mutex_t *);
int pthread_mutex_lock(pthread_mutex_t *m) {
  if (in_render) ++locks;
  if (!real_lock) /* libraries lock before main runs */
    real_lock = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_lock");
  return real_lock(m);
}
#define RENDER_BEGIN() (in_render = 1)
#define RENDER_END() (in_render = 0)
#else
static long allocations = -1, locks = -1;
#define RENDER_BEGIN() ((void)0)
#define RENDER_END() ((void)0)
#endif

static const char *state_name(distill_state s) {
  static const char *names[] = {"connecting", "buffering", "playing", "stopped", "failed"};
  return names[s];
}

int main(int argc, char **argv) {
  distill_config config;
  distill_config_init(&config);
  config.mode = DISTILL_MODE_SLIDER;
  int32_t sliders[1] = {4};
  config.sliders = sliders;
  config.num_sliders = 1;
  double seconds = 5, slider_at = -1;
  int interleave = 0;
  const char *output = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    if (!strcmp(a, "--server")) config.server = v;
    else if (!strcmp(a, "--token")) config.token = v;
    else if (!strcmp(a, "--rate")) config.sample_rate = (uint32_t)atoi(v);
    else if (!strcmp(a, "--channels")) config.channels = (uint32_t)atoi(v);
    else if (!strcmp(a, "--seconds")) seconds = atof(v);
    else if (!strcmp(a, "--seed")) { config.has_seed = 1; config.seed = strtoull(v, NULL, 10); }
    else if (!strcmp(a, "--slider-at")) slider_at = atof(v);
    else if (!strcmp(a, "--max-frames")) config.max_frames = (uint32_t)atoi(v);
    else if (!strcmp(a, "--interleaved")) interleave = atoi(v);
    else if (!strcmp(a, "-o")) output = v;
    else { fprintf(stderr, "render_host: unknown option %s\n", a); return 2; }
  }
  if (!output) { fprintf(stderr, "render_host: -o out.f32 is required\n"); return 2; }
  char error[256];
  /* The counters see what the library does: distill_open allocates, distill_get_status locks
     (both are counted here as if inside distill_render, then the counts start again). */
  RENDER_BEGIN();
  distill_session *s = distill_open(&config, error, sizeof error);
  RENDER_END();
  if (!s) { fprintf(stderr, "render_host: %s\n", error); return 2; }
  distill_status probe;
  RENDER_BEGIN();
  distill_get_status(s, &probe);
  RENDER_END();
  long alloc_check = allocations, lock_check = locks;
#ifdef COUNT_CALLS
  allocations = locks = 0;
#endif
  printf("latency_frames %u\n", distill_latency_frames(s));

  FILE *f = fopen(output, "wb");
  const uint32_t ch = config.channels, max = config.max_frames;
  float *planes[2], *interleaved = malloc(sizeof(float) * max * ch);
  for (uint32_t c = 0; c < ch; ++c) planes[c] = malloc(sizeof(float) * max);
  srand(1234);
  const double start = now_s();
  uint64_t frames = 0, stop_frame = 0, ended_frame = 0, first_underrun_frame = 0, slider_frame = 0, heard_frame = 0, sent = 0, audio_from = 0;
  int playing = 0;
  int stopping = 0;
  float peak = 0;
  long nan_count = 0;
  for (;;) {
    uint32_t n = 1 + (uint32_t)(rand() % (int)max);
    RENDER_BEGIN();
    if (interleave) distill_render_interleaved(s, interleaved, n);
    else distill_render(s, planes, n);
    RENDER_END();
    for (uint32_t i = 0; i < n && interleave; ++i)
      for (uint32_t c = 0; c < ch; ++c) planes[c][i] = interleaved[i * ch + c];
    for (uint32_t i = 0; i < n; ++i)
      for (uint32_t c = 0; c < ch; ++c) {
        float x = planes[c][i];
        if (isnan(x)) ++nan_count;
        else if (fabsf(x) > peak) peak = fabsf(x);
        interleaved[i * ch + c] = x;
      }
    fwrite(interleaved, sizeof(float), (size_t)n * ch, f);
    frames += n;
    distill_status st;
    distill_get_status(s, &st);
    /* --slider-at and --seconds count from the first audible frame, so that a machine slow
       to start the session still plays that long before the control and the stop. */
    if (!playing && st.state == DISTILL_STATE_PLAYING) {
      playing = 1;
      audio_from = st.frames_before_audio;
    }
    const double t = playing ? (double)(frames - audio_from) / config.sample_rate : -1;
    if (slider_at >= 0 && !slider_frame && t >= slider_at) {
      distill_set_slider(s, 1, -6);
      slider_frame = frames;
    }
    if (st.underruns > 0 && !first_underrun_frame) first_underrun_frame = frames;
    if (slider_frame && !sent && st.control_sent > 0) sent = st.control_sent;
    if (sent && !heard_frame && st.control_heard >= sent) heard_frame = frames;
    if (!stopping && t >= seconds) {
      distill_stop(s);
      stopping = 1;
      stop_frame = frames;
    }
    /* After the session ended, 0.2 s more: silence that the test can check. */
    if (stopping && !ended_frame &&
        (st.state == DISTILL_STATE_STOPPED || st.state == DISTILL_STATE_FAILED))
      ended_frame = frames;
    if (ended_frame && frames >= ended_frame + config.sample_rate / 5) break;
    if (stopping && t > seconds + 10) break; /* the server never ended the session */
    if (!stopping && st.state == DISTILL_STATE_FAILED) break;
    if (!playing && frames > (uint64_t)(120.0 * config.sample_rate)) break; /* never played */
    sleep_until(start + (double)frames / config.sample_rate);
  }
  fclose(f);
  distill_status st;
  distill_get_status(s, &st);
  printf("state %s\nunderruns %llu\nconnects %llu\nframes_rendered %llu\nframes_played %llu\n"
         "frames_before_audio %llu\nslider_frame %llu\nheard_frame %llu\nstop_frame %llu\n"
         "seed %llu\npeak %.6f\nnans %ld\nallocations_in_render %ld\nlocks_in_render %ld\n"
         "alloc_check %ld\nlock_check %ld\nfirst_underrun_frame %llu\nlast_error %s\n",
         state_name(st.state), (unsigned long long)st.underruns, (unsigned long long)st.connects,
         (unsigned long long)st.frames_rendered, (unsigned long long)st.frames_played,
         (unsigned long long)st.frames_before_audio, (unsigned long long)slider_frame,
         (unsigned long long)heard_frame, (unsigned long long)stop_frame,
         (unsigned long long)st.seed, peak, nan_count, allocations, locks, alloc_check, lock_check,
         (unsigned long long)first_underrun_frame, st.last_error);
  distill_close(s);
  for (uint32_t c = 0; c < ch; ++c) free(planes[c]);
  free(interleaved);
  return 0;
}
