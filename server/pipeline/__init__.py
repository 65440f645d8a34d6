"""Pure numpy from request params to audio blocks: specs and params, the runner port that the
engine implements, latent trajectories, the mel source, the streaming vocoder's feeding, the
block renderer, live sessions, DSP and resampling. No gRPC, no onnxruntime, no clock but the
deadlines it is given."""
