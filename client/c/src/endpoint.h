// Endpoint: the server, token and TLS settings of a distill_config (NULLs -> environment),
// the gRPC channel to it, and what its status codes mean to a session.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "distill.h"

namespace distill {

// Server, token and TLS settings resolved from a distill_config (NULLs -> environment).
struct Endpoint {
  std::string server;
  std::string token;
  bool tls = false;
  std::string root_certs;  // PEM; empty with tls: the system's roots
};

// Resolves config's endpoint; false (and *error) when the TLS root file cannot be read.
bool ResolveEndpoint(const distill_config& config, Endpoint* endpoint, std::string* error);
std::shared_ptr<grpc::Channel> MakeChannel(const Endpoint& endpoint);
void AddToken(const Endpoint& endpoint, grpc::ClientContext* context);
// Codes a retry cannot cure: the session fails for good with the server's message.
bool Permanent(grpc::StatusCode code);
// The code's name, as the status messages show it.
const char* CodeName(grpc::StatusCode code);

}  // namespace distill
