/* Real-time pacing for the test hosts (render_host.c, client/plugin/tests/clap_host.c): they
   call the audio callback no faster than the audio it renders. */
#ifndef DISTILL_TEST_PACING_H
#define DISTILL_TEST_PACING_H

#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Sleeps until now_s() reaches t (returns at once if it has). */
static void sleep_until(double t) {
  double d = t - now_s();
  if (d <= 0) return;
  struct timespec ts = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
  nanosleep(&ts, NULL);
}

#endif
