// The C ABI (distill.h) over Session: argument checks and conversions, nothing else.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "distill.h"
#include "session.h"

namespace v1 = distill_serve::v1;

struct distill_session {
  std::unique_ptr<distill::Session> session;
};

struct distill_model_info {
  v1::GetModelInfoResponse response;
};

namespace {

void WriteError(char* error, size_t error_size, const std::string& message) {
  if (error && error_size > 0) std::snprintf(error, error_size, "%s", message.c_str());
}

// Why config cannot open a session, or "" when it can.
std::string CheckConfig(const distill_config& c) {
  if (c.mode < DISTILL_MODE_CROSSFADE || c.mode > DISTILL_MODE_SLIDER) {
    return "mode must be DISTILL_MODE_CROSSFADE, _LATENT_INTERP or _SLIDER";
  }
  if (c.channels != 1 && c.channels != 2) return "channels must be 1 or 2";
  if (c.sample_rate == 0) return "sample_rate must be the host's rate in Hz";
  if (c.max_frames == 0 || c.max_frames > DISTILL_MAX_BLOCK) {
    return "max_frames must be in 1.." + std::to_string(DISTILL_MAX_BLOCK);
  }
  if (c.num_sliders > DISTILL_MAX_SLIDERS || (c.num_sliders > 0 && !c.sliders)) {
    return "sliders: at most " + std::to_string(DISTILL_MAX_SLIDERS) + " positions, not NULL";
  }
  if (c.latent_dim > DISTILL_MAX_LATENT || (c.latent_dim > 0 && !c.latent)) {
    return "latent: at most " + std::to_string(DISTILL_MAX_LATENT) + " values, not NULL";
  }
  if (c.lookahead_s < 0 || c.jitter_s < 0 || c.lookahead_s > 10 || c.jitter_s > 10) {
    return "lookahead_s and jitter_s must be in [0, 10] seconds";
  }
  if (!c.timeline && (c.start_position != 0 || c.unpaced)) {
    return "start_position and unpaced need a timeline session (timeline = 1)";
  }
  return "";
}

int QueueControl(distill_session* s, const distill::Control& control) {
  if (!s) return DISTILL_ERROR_ARGUMENT;
  return s->session->Queue(control);
}

// The same, at a timeline position (timeline sessions only).
int QueueAt(distill_session* s, distill::Control control, uint64_t position) {
  if (!s || !s->session->timeline()) return DISTILL_ERROR_ARGUMENT;
  control.has_at = true;
  control.at = position;
  return QueueControl(s, control);
}

// The controls with a value, built when the value is in range (false: it is not).
bool SliderControl(uint32_t index, int32_t value, distill::Control* control) {
  if (index >= DISTILL_MAX_SLIDERS) return false;
  control->kind = distill::Control::kSlider;
  control->index = index;
  control->position = value;
  return true;
}

bool EvolutionControl(float evolution_amount, distill::Control* control) {
  if (!(evolution_amount >= 0 && evolution_amount <= 1)) return false;
  control->kind = distill::Control::kEvolution;
  control->value = evolution_amount;
  return true;
}

bool WidthControl(float stereo_width, distill::Control* control) {
  if (!(stereo_width >= 0 && stereo_width <= 2)) return false;
  control->kind = distill::Control::kWidth;
  control->value = stereo_width;
  return true;
}

}  // namespace

extern "C" {

void distill_config_init(distill_config* config) {
  if (!config) return;
  std::memset(config, 0, sizeof *config);
  config->mode = DISTILL_MODE_CROSSFADE;
  config->evolution_amount = -1;
  config->stereo_width = -1;
  config->sample_rate = 48000;
  config->channels = 1;
  config->max_frames = 4096;
}

distill_session* distill_open(const distill_config* config, char* error, size_t error_size) {
  if (!config) {
    WriteError(error, error_size, "config is NULL");
    return nullptr;
  }
  std::string why = CheckConfig(*config);
  distill::Endpoint endpoint;
  if (why.empty()) distill::ResolveEndpoint(*config, &endpoint, &why);
  if (!why.empty()) {
    WriteError(error, error_size, why);
    return nullptr;
  }
  distill::ControlState initial;
  for (uint32_t i = 0; i < config->num_sliders; ++i) initial.sliders[i] = config->sliders[i];
  if (config->latent_dim > 0) {
    initial.latent.assign(config->latent, config->latent + config->latent_dim);
    initial.latent_is_latest = true;
  }
  initial.evolution = config->evolution_amount;
  initial.has_seed = config->has_seed != 0;
  initial.seed = config->seed;
  initial.width = config->stereo_width;
  initial.start_position = config->start_position;
  initial.unpaced = config->unpaced != 0;
  auto* s = new distill_session;
  s->session = std::make_unique<distill::Session>(*config, std::move(endpoint), std::move(initial));
  WriteError(error, error_size, "");
  return s;
}

uint32_t distill_render(distill_session* s, float* const* out, uint32_t frames) {
  if (!s || !out) return 0;
  return s->session->Render(out, frames, 1);
}

uint32_t distill_render_interleaved(distill_session* s, float* out, uint32_t frames) {
  if (!s || !out) return 0;
  float* planes[2] = {out, out + 1};
  return s->session->Render(planes, frames, s->session->channels());
}

uint32_t distill_wait(distill_session* s, uint32_t frames, double timeout_s) {
  if (!s) return 0;
  return s->session->Wait(frames, timeout_s);
}

uint32_t distill_render_at(distill_session* s, float* const* out, uint32_t frames,
                           int64_t position) {
  if (!s || !out || !s->session->timeline()) return 0;
  return s->session->RenderAt(out, frames, 1, position);
}

int distill_wait_at(distill_session* s, uint32_t frames, int64_t position, double timeout_s) {
  if (!s || !s->session->timeline()) return 0;
  return s->session->WaitAt(frames, position, timeout_s) ? 1 : 0;
}

int distill_seek(distill_session* s, uint64_t position, int unpaced) {
  distill::Control control;
  control.kind = distill::Control::kSeek;
  control.unpaced = unpaced != 0;
  return QueueAt(s, control, position);
}

int distill_set_slider(distill_session* s, uint32_t index, int32_t position) {
  distill::Control control;
  return SliderControl(index, position, &control) ? QueueControl(s, control)
                                                  : DISTILL_ERROR_ARGUMENT;
}

int distill_set_slider_at(distill_session* s, uint32_t index, int32_t value, uint64_t position) {
  distill::Control control;
  return SliderControl(index, value, &control) ? QueueAt(s, control, position)
                                               : DISTILL_ERROR_ARGUMENT;
}

int distill_set_evolution_at(distill_session* s, float evolution_amount, uint64_t position) {
  distill::Control control;
  return EvolutionControl(evolution_amount, &control) ? QueueAt(s, control, position)
                                                      : DISTILL_ERROR_ARGUMENT;
}

int distill_set_stereo_width_at(distill_session* s, float stereo_width, uint64_t position) {
  distill::Control control;
  return WidthControl(stereo_width, &control) ? QueueAt(s, control, position)
                                              : DISTILL_ERROR_ARGUMENT;
}

int distill_set_latent(distill_session* s, const float* latent, uint32_t latent_dim) {
  if (!latent || latent_dim == 0 || latent_dim > DISTILL_MAX_LATENT) return DISTILL_ERROR_ARGUMENT;
  distill::Control control;
  control.kind = distill::Control::kLatent;
  control.latent_dim = latent_dim;
  std::memcpy(control.latent, latent, latent_dim * sizeof(float));
  return QueueControl(s, control);
}

int distill_set_evolution(distill_session* s, float evolution_amount) {
  distill::Control control;
  return EvolutionControl(evolution_amount, &control) ? QueueControl(s, control)
                                                      : DISTILL_ERROR_ARGUMENT;
}

int distill_set_stereo_width(distill_session* s, float stereo_width) {
  distill::Control control;
  return WidthControl(stereo_width, &control) ? QueueControl(s, control)
                                              : DISTILL_ERROR_ARGUMENT;
}

int distill_stop(distill_session* s) {
  distill::Control control;
  control.kind = distill::Control::kStop;
  return QueueControl(s, control);
}

int distill_play(distill_session* s) {
  distill::Control control;
  control.kind = distill::Control::kPlay;
  return QueueControl(s, control);
}

int distill_set_seed(distill_session* s, uint64_t seed) {
  distill::Control control;
  control.kind = distill::Control::kSeed;
  control.seed = seed;
  return QueueControl(s, control);
}

uint32_t distill_latency_frames(const distill_session* s) {
  return s ? s->session->latency_frames() : 0;
}

distill_state distill_get_state(const distill_session* s) {
  return s ? s->session->State() : DISTILL_STATE_FAILED;
}

uint64_t distill_get_underruns(const distill_session* s) {
  return s ? s->session->underruns() : 0;
}

void distill_get_status(distill_session* s, distill_status* status) {
  if (!s || !status) return;
  s->session->GetStatus(status);
}

void distill_close(distill_session* s) { delete s; }

distill_model_info* distill_model_info_get(const distill_config* config, double timeout_s,
                                           char* error, size_t error_size) {
  distill_config defaults;
  if (!config) {
    distill_config_init(&defaults);
    config = &defaults;
  }
  distill::Endpoint endpoint;
  std::string why;
  if (!distill::ResolveEndpoint(*config, &endpoint, &why)) {
    WriteError(error, error_size, why);
    return nullptr;
  }
  auto stub = v1::DistillService::NewStub(distill::MakeChannel(endpoint));
  grpc::ClientContext context;
  distill::AddToken(endpoint, &context);
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>((timeout_s > 0 ? timeout_s : 10) * 1000)));
  auto info = std::make_unique<distill_model_info>();
  v1::GetModelInfoRequest request;
  if (config->model) request.set_model(config->model);
  grpc::Status status = stub->GetModelInfo(&context, request, &info->response);
  if (!status.ok()) {
    WriteError(error, error_size, endpoint.server + ": " + status.error_message());
    return nullptr;
  }
  WriteError(error, error_size, "");
  return info.release();
}

uint32_t distill_model_latent_dim(const distill_model_info* info) {
  return info ? info->response.latent_dim() : 0;
}

uint32_t distill_model_num_sliders(const distill_model_info* info) {
  return info ? static_cast<uint32_t>(info->response.sliders_size()) : 0;
}

const char* distill_model_slider_label(const distill_model_info* info, uint32_t i) {
  if (!info || i >= distill_model_num_sliders(info)) return nullptr;
  return info->response.sliders(static_cast<int>(i)).label().c_str();
}

int32_t distill_model_slider_min(const distill_model_info* info, uint32_t i) {
  if (!info || i >= distill_model_num_sliders(info)) return 0;
  return info->response.sliders(static_cast<int>(i)).min_position();
}

int32_t distill_model_slider_max(const distill_model_info* info, uint32_t i) {
  if (!info || i >= distill_model_num_sliders(info)) return 0;
  return info->response.sliders(static_cast<int>(i)).max_position();
}

uint32_t distill_model_num_sample_rates(const distill_model_info* info) {
  return info ? static_cast<uint32_t>(info->response.sample_rates_size()) : 0;
}

uint32_t distill_model_sample_rate(const distill_model_info* info, uint32_t i) {
  if (!info || i >= distill_model_num_sample_rates(info)) return 0;
  return info->response.sample_rates(static_cast<int>(i));
}

void distill_model_info_free(distill_model_info* info) { delete info; }

const char* distill_version(void) { return "libdistill 2 (distill_serve.v1)"; }

}  // extern "C"
