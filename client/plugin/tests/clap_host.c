/*
 * clap_host: a headless CLAP host for the Distill plug-in, run by tests/test_plugin.py. It
 * loads the .clap (dlopen, clap_entry, the plug-in factory), provides the host extensions DPF's
 * wrapper asks for (clap.latency, clap.params, clap.state, clap.thread-check), activates the
 * plug-in and processes it in buffers of random size (1..max), paced in real time. It writes
 * the stereo output as interleaved float32 and prints `key value` lines: the reported latency,
 * the parameters' names, when a parameter event was sent, when the plug-in's meters (Status,
 * Underruns) changed, the plug-in's saved state.
 *
 *   clap_host PLUGIN.clap --rate R --seconds S [--max-frames M] [--param ID=VALUE@SECONDS ...]
 *             [--load-state FILE] [--save-state FILE] -o out.f32
 *
 * Timeline (a DAW's transport): --transport PLAN plays the segments of PLAN in order, each
 * "FROM:TO" in seconds of the song (a start, a seek, a loop pass) or "-:SECONDS" (transport
 * stopped), and tells the plug-in the song position (clap_event_transport, seconds timeline).
 * --auto ID=VALUE@SECONDS is automation at a song position: sent in the buffer that starts
 * there (buffers are cut at automation points), and at a segment's start the values in force
 * there. --offline renders as a bounce: the render extension set to offline, no pacing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clap/entry.h"
#include "clap/ext/latency.h"
#include "clap/ext/params.h"
#include "clap/ext/render.h"
#include "clap/ext/state.h"
#include "clap/ext/thread-check.h"
#include "clap/host.h"
#include "clap/plugin-factory.h"
#include "clap/process.h"
#include "pacing.h"

/* --- host side ------------------------------------------------------------------------- */

static int latency_changes, param_rescans;
static void latency_changed(const clap_host_t *h) { (void)h; ++latency_changes; }
static void params_rescan(const clap_host_t *h, clap_param_rescan_flags f) { (void)h; (void)f; ++param_rescans; }
static void params_clear(const clap_host_t *h, clap_id id, clap_param_clear_flags f) { (void)h; (void)id; (void)f; }
static void params_request_flush(const clap_host_t *h) { (void)h; }
static void state_mark_dirty(const clap_host_t *h) { (void)h; }
static bool is_main_thread(const clap_host_t *h) { (void)h; return true; }
static bool is_audio_thread(const clap_host_t *h) { (void)h; return true; }

static const clap_host_latency_t host_latency = {latency_changed};
static const clap_host_params_t host_params = {params_rescan, params_clear, params_request_flush};
static const clap_host_state_t host_state = {state_mark_dirty};
static const clap_host_thread_check_t host_thread_check = {is_main_thread, is_audio_thread};

static const void *host_get_extension(const clap_host_t *h, const char *id) {
  (void)h;
  if (!strcmp(id, CLAP_EXT_LATENCY)) return &host_latency;
  if (!strcmp(id, CLAP_EXT_PARAMS)) return &host_params;
  if (!strcmp(id, CLAP_EXT_STATE)) return &host_state;
  if (!strcmp(id, CLAP_EXT_THREAD_CHECK)) return &host_thread_check;
  return NULL;
}
static void host_request(const clap_host_t *h) { (void)h; }

static const clap_host_t host = {
    CLAP_VERSION_INIT, NULL, "distill clap_host", "distill-serve", "", "1",
    host_get_extension, host_request, host_request, host_request};

/* Input events: parameter changes of one process call. */
#define MAX_EVENTS 16
static clap_event_param_value_t pending[MAX_EVENTS];
static uint32_t pending_count;
static uint32_t in_size(const clap_input_events_t *l) { (void)l; return pending_count; }
static const clap_event_header_t *in_get(const clap_input_events_t *l, uint32_t i) {
  (void)l;
  return &pending[i].header;
}
static void push_param(clap_id id, double value) {
  if (pending_count == MAX_EVENTS) return;
  clap_event_param_value_t *e = &pending[pending_count++];
  memset(e, 0, sizeof *e);
  e->header.size = sizeof *e;
  e->header.space_id = CLAP_CORE_EVENT_SPACE_ID;
  e->header.type = CLAP_EVENT_PARAM_VALUE;
  e->param_id = id;
  e->note_id = -1;
  e->port_index = e->channel = e->key = -1;
  e->value = value;
}
static bool out_try_push(const clap_output_events_t *l, const clap_event_header_t *e) {
  (void)l; (void)e;
  return true;
}
static const clap_input_events_t in_events = {NULL, in_size, in_get};
static const clap_output_events_t out_events = {NULL, out_try_push};

/* State streams over a memory buffer. */
static char state_buffer[65536];
static size_t state_size, state_read;
static int64_t state_write(const clap_ostream_t *s, const void *b, uint64_t n) {
  (void)s;
  if (state_size + n > sizeof state_buffer) return -1;
  memcpy(state_buffer + state_size, b, n);
  state_size += n;
  return (int64_t)n;
}
static int64_t state_read_fn(const clap_istream_t *s, void *b, uint64_t n) {
  (void)s;
  size_t left = state_size - state_read;
  if (n > left) n = left;
  memcpy(b, state_buffer + state_read, n);
  state_read += n;
  return (int64_t)n;
}

#define MAX_CHANGES 16
struct change { clap_id id; double value; double at; int sent; };
#define MAX_SEGMENTS 16
struct segment { int playing; double from, to; };  /* seconds; stopped: to = its length */

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: clap_host PLUGIN.clap ...\n"); return 2; }
  const char *path = argv[1], *output = NULL, *load_state = NULL, *save_state = NULL;
  double rate = 48000, seconds = 5, after_recovery = -1, after_stopped = -1;
  uint32_t max_frames = 4096;
  struct change changes[MAX_CHANGES], autos[MAX_CHANGES];
  int n_changes = 0, n_autos = 0, offline = 0, n_segments = 0;
  struct segment segments[MAX_SEGMENTS];
  for (int i = 2; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    if (!strcmp(a, "--rate")) rate = atof(v);
    else if (!strcmp(a, "--seconds")) seconds = atof(v);
    /* Stop this long after the status went playing -> connecting -> playing again (a server
       that went away and came back), however long that took; --seconds stays the cap. */
    else if (!strcmp(a, "--after-recovery")) after_recovery = atof(v);
    /* Stop this long after the status first reads stopped (Play off and the ring drained). */
    else if (!strcmp(a, "--after-stopped")) after_stopped = atof(v);
    else if (!strcmp(a, "--max-frames")) max_frames = (uint32_t)atoi(v);
    else if (!strcmp(a, "--load-state")) load_state = v;
    else if (!strcmp(a, "--save-state")) save_state = v;
    else if (!strcmp(a, "--param") && n_changes < MAX_CHANGES) {
      struct change *c = &changes[n_changes++];
      c->sent = 0;
      if (sscanf(v, "%u=%lf@%lf", &c->id, &c->value, &c->at) != 3) {
        fprintf(stderr, "clap_host: --param wants ID=VALUE@SECONDS\n");
        return 2;
      }
    } else if (!strcmp(a, "--auto") && n_autos < MAX_CHANGES) {
      struct change *c = &autos[n_autos++];
      if (sscanf(v, "%u=%lf@%lf", &c->id, &c->value, &c->at) != 3) {
        fprintf(stderr, "clap_host: --auto wants ID=VALUE@SECONDS\n");
        return 2;
      }
    } else if (!strcmp(a, "--transport")) {
      for (char *part = strtok((char *)v, ","); part && n_segments < MAX_SEGMENTS; part = strtok(NULL, ",")) {
        struct segment *g = &segments[n_segments++];
        g->playing = part[0] != '-';
        if (g->playing ? sscanf(part, "%lf:%lf", &g->from, &g->to) != 2
                       : sscanf(part, "-:%lf", &g->to) != 1) {
          fprintf(stderr, "clap_host: --transport wants FROM:TO or -:SECONDS, comma-separated\n");
          return 2;
        }
      }
    } else if (!strcmp(a, "--offline")) {
      offline = atoi(v);
    } else if (!strcmp(a, "-o")) output = v;
    else { fprintf(stderr, "clap_host: unknown option %s\n", a); return 2; }
  }
  if (!output) { fprintf(stderr, "clap_host: -o out.f32 is required\n"); return 2; }

  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) { fprintf(stderr, "clap_host: %s\n", dlerror()); return 1; }
  const clap_plugin_entry_t *entry = (const clap_plugin_entry_t *)dlsym(lib, "clap_entry");
  if (!entry || !entry->init(path)) { fprintf(stderr, "clap_host: no clap_entry\n"); return 1; }
  const clap_plugin_factory_t *factory =
      (const clap_plugin_factory_t *)entry->get_factory(CLAP_PLUGIN_FACTORY_ID);
  if (!factory || factory->get_plugin_count(factory) != 1) { fprintf(stderr, "clap_host: factory\n"); return 1; }
  const clap_plugin_descriptor_t *desc = factory->get_plugin_descriptor(factory, 0);
  printf("plugin_id %s\nplugin_name %s\n", desc->id, desc->name);
  for (const char *const *f = desc->features; f && *f; ++f) printf("feature %s\n", *f);
  const clap_plugin_t *plugin = factory->create_plugin(factory, &host, desc->id);
  if (!plugin || !plugin->init(plugin)) { fprintf(stderr, "clap_host: init failed\n"); return 1; }

  const clap_plugin_params_t *params = (const clap_plugin_params_t *)plugin->get_extension(plugin, CLAP_EXT_PARAMS);
  const clap_plugin_latency_t *latency = (const clap_plugin_latency_t *)plugin->get_extension(plugin, CLAP_EXT_LATENCY);
  const clap_plugin_state_t *state = (const clap_plugin_state_t *)plugin->get_extension(plugin, CLAP_EXT_STATE);
  if (!params || !latency || !state) { fprintf(stderr, "clap_host: missing extensions\n"); return 1; }
  long status_id = -1, underruns_id = -1;
  double last_status = -1, last_underruns = 0;
  for (uint32_t i = 0; i < params->count(plugin); ++i) {
    clap_param_info_t info;
    params->get_info(plugin, i, &info);
    if (!strcmp(info.name, "Status")) status_id = info.id;
    if (!strcmp(info.name, "Underruns")) underruns_id = info.id;
    printf("param %u %s|%g|%g|%g\n", info.id, info.name, info.min_value, info.max_value, info.default_value);
  }
  if (load_state) {  /* a project's saved state: restore it before activating */
    FILE *sf = fopen(load_state, "rb");
    if (!sf) { fprintf(stderr, "clap_host: cannot read %s\n", load_state); return 2; }
    state_size = fread(state_buffer, 1, sizeof state_buffer, sf);
    fclose(sf);
    state_read = 0;
    clap_istream_t in = {NULL, state_read_fn};
    printf("state_loaded %d\n", state->load(plugin, &in) ? 1 : 0);
  }
  if (offline) {
    const clap_plugin_render_t *render = (const clap_plugin_render_t *)plugin->get_extension(plugin, CLAP_EXT_RENDER);
    printf("render_offline %d\n", render && render->set(plugin, CLAP_RENDER_OFFLINE) ? 1 : 0);
  }
  if (!plugin->activate(plugin, rate, 1, max_frames)) { fprintf(stderr, "clap_host: activate failed\n"); return 1; }
  printf("latency_frames %u\n", latency->get(plugin));
  plugin->start_processing(plugin);

  float *left = calloc(max_frames, sizeof(float)), *right = calloc(max_frames, sizeof(float));
  float *channels[2] = {left, right};
  float *interleaved = malloc(sizeof(float) * 2 * max_frames);
  clap_audio_buffer_t out_buffer = {channels, NULL, 2, 0, 0};
  FILE *f = fopen(output, "wb");
  srand(4321);
  const double start = now_s();
  uint64_t frames = 0, recovered_at = 0, stopped_at = 0, first_playing = 0;
  int phase = 0; /* 0 not yet playing, 1 playing, 2 gone (connecting), 3 playing again */
  int seg = 0;               /* --transport: the segment playing, its song position (frames) */
  int64_t song = n_segments ? llround(segments[0].from * rate) : 0, seg_done = 0;
  int seg_start = 1;
  for (;;) {
    uint32_t n = 1 + (uint32_t)(rand() % (int)max_frames);
    clap_event_transport_t transport;
    const struct segment *g = n_segments ? &segments[seg] : NULL;
    if (g) {  /* cut the buffer at the segment's end and at automation points */
      const int64_t end = g->playing ? llround(g->to * rate) : song + llround(g->to * rate) - seg_done;
      if (end - song < (int64_t)n) n = (uint32_t)(end - song);
      for (int i = 0; g->playing && i < n_autos; ++i) {
        const int64_t at = llround(autos[i].at * rate);
        if (at > song && at < song + (int64_t)n) n = (uint32_t)(at - song);
      }
      memset(&transport, 0, sizeof transport);
      transport.header.size = sizeof transport;
      transport.header.space_id = CLAP_CORE_EVENT_SPACE_ID;
      transport.header.type = CLAP_EVENT_TRANSPORT;
      transport.flags = CLAP_TRANSPORT_HAS_SECONDS_TIMELINE | (g->playing ? CLAP_TRANSPORT_IS_PLAYING : 0);
      transport.song_pos_seconds = (clap_sectime)llround((double)song / rate * (double)CLAP_SECTIME_FACTOR);
    }
    /* --param times count from the first buffer the plug-in played in (Status playing), so
       that a machine slow to start the session still plays that long before each change. */
    double t = phase ? (double)(frames - first_playing) / rate : -1;
    pending_count = 0;
    for (int i = 0; i < n_changes; ++i) {
      if (!changes[i].sent && t >= changes[i].at) {
        push_param(changes[i].id, changes[i].value);
        changes[i].sent = 1;
        printf("param_sent %u %llu\n", changes[i].id, (unsigned long long)frames);
        break;
      }
    }
    for (int i = 0; g && g->playing && i < n_autos; ++i) {  /* automation at this position */
      const int64_t at = llround(autos[i].at * rate);
      if (at == song) {
        push_param(autos[i].id, autos[i].value);
      } else if (seg_start) {  /* a lane's value where the segment starts: its last point
                                  before, else the parameter's default */
        int last = -1, first_of_lane = 1;
        for (int j = 0; j < n_autos; ++j) {
          if (autos[j].id != autos[i].id) continue;
          if (j < i) first_of_lane = 0;
          const int64_t aj = llround(autos[j].at * rate);
          if (aj <= song && (last < 0 || aj >= llround(autos[last].at * rate))) last = j;
        }
        if (first_of_lane && last >= 0 && llround(autos[last].at * rate) < song) {
          push_param(autos[last].id, autos[last].value);
        } else if (first_of_lane && last < 0) {
          clap_param_info_t info;
          for (uint32_t k = 0; k < params->count(plugin); ++k) {
            params->get_info(plugin, k, &info);
            if (info.id == autos[i].id) push_param(info.id, info.default_value);
          }
        }
      }
    }
    if (g && seg_start) printf("segment %d %lld %llu\n", seg, (long long)song, (unsigned long long)frames);
    seg_start = 0;
    clap_process_t process = {(int64_t)frames, n, g ? &transport : NULL, NULL, &out_buffer, 0, 1, &in_events, &out_events};
    if (plugin->process(plugin, &process) == CLAP_PROCESS_ERROR) { fprintf(stderr, "clap_host: process error\n"); return 1; }
    for (uint32_t i = 0; i < n; ++i) {
      interleaved[2 * i] = left[i];
      interleaved[2 * i + 1] = right[i];
    }
    fwrite(interleaved, sizeof(float), 2 * (size_t)n, f);
    frames += n;
    /* The plug-in's meters (output parameters): status and underruns, after every buffer. */
    double status = -1, underruns = -1;
    if (status_id >= 0) params->get_value(plugin, (clap_id)status_id, &status);
    if (underruns_id >= 0) params->get_value(plugin, (clap_id)underruns_id, &underruns);
    if (underruns > last_underruns) {
      printf("underrun_at %llu %.0f\n", (unsigned long long)frames, underruns);
      last_underruns = underruns;
    }
    if (status != last_status) {
      printf("status_at %llu %.0f\n", (unsigned long long)frames, status);
      last_status = status;
      if (phase == 0 && status == 2) {
        phase = 1;
        first_playing = frames;
      } else if (phase == 1 && status == 0) {
        phase = 2;
      } else if (phase == 2 && status == 2) {
        phase = 3;
        recovered_at = frames;
      }
      if (status == 3 && stopped_at == 0) stopped_at = frames;
    }
    if (g) {  /* the song moves on; the next segment starts where the plan says */
      seg_done += n;
      if (g->playing) song += n;
      const int64_t length = g->playing ? llround((g->to - g->from) * rate) : llround(g->to * rate);
      if (seg_done >= length) {
        if (++seg == n_segments) break;
        seg_done = 0;
        seg_start = 1;
        if (segments[seg].playing) song = llround(segments[seg].from * rate);
      }
    } else if (frames / rate >= seconds) break;
    if (after_recovery >= 0 && phase == 3 && (frames - recovered_at) / rate >= after_recovery) break;
    if (after_stopped >= 0 && stopped_at && (frames - stopped_at) / rate >= after_stopped) break;
    if (!offline) sleep_until(start + frames / rate);
  }
  fclose(f);
  clap_ostream_t out = {NULL, state_write};
  state_size = 0;
  if (state->save(plugin, &out)) {
    if (save_state) {
      FILE *sf = fopen(save_state, "wb");
      fwrite(state_buffer, 1, state_size, sf);
      fclose(sf);
    }
    printf("state ");  /* newlines shown as spaces, NULs as |, other bytes as ? */
    for (size_t i = 0; i < state_size; ++i) {
      unsigned char c = (unsigned char)state_buffer[i];
      putchar(c == '\n' ? ' ' : c == 0 ? '|' : (c < 32 || c > 126) ? '?' : c);
    }
    putchar('\n');
  }
  plugin->stop_processing(plugin);
  plugin->deactivate(plugin);
  plugin->destroy(plugin);
  entry->deinit();
  printf("frames %llu\nlatency_changes %d\n", (unsigned long long)frames, latency_changes);
  free(left); free(right); free(interleaved);
  return 0;
}
