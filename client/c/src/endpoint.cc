// The server's address, token and TLS settings from a distill_config, the channel to it, and
// what its status codes mean to a session.
#include "endpoint.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace distill {

bool Permanent(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::OUT_OF_RANGE:
      return true;
    default:
      return false;
  }
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    default: return "ERROR";
  }
}

bool ResolveEndpoint(const distill_config& config, Endpoint* endpoint, std::string* error) {
  const char* server = config.server ? config.server : std::getenv("DISTILL_SERVER");
  endpoint->server = (server && *server) ? server : "127.0.0.1:50051";
  const char* token = config.token ? config.token : std::getenv("DISTILL_TOKEN");
  endpoint->token = token ? token : "";
  endpoint->tls = config.tls_root_certs != nullptr;
  if (endpoint->tls && *config.tls_root_certs) {
    std::ifstream file(config.tls_root_certs);
    if (!file) {
      *error = std::string("cannot read TLS root certificates ") + config.tls_root_certs;
      return false;
    }
    std::stringstream pem;
    pem << file.rdbuf();
    endpoint->root_certs = pem.str();
  }
  return true;
}

std::shared_ptr<grpc::Channel> MakeChannel(const Endpoint& endpoint) {
  grpc::ChannelArguments args;
  // Reconnect quickly once a server is back (gRPC's default backoff grows to 120 s).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (endpoint.tls) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = endpoint.root_certs;
    credentials = grpc::SslCredentials(options);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(endpoint.server, credentials, args);
}

void AddToken(const Endpoint& endpoint, grpc::ClientContext* context) {
  if (!endpoint.token.empty()) context->AddMetadata("authorization", "Bearer " + endpoint.token);
}

}  // namespace distill
