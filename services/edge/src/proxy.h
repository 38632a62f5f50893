// The edge's HTTP surface as a RequestHandler per I/O thread: the route table (routes.cpp) sends
// each request to its handler (endpoints.h: inference, models, usage); exchange.h, attempts.h and
// relay.h hold the steps every request shares.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/clients.h"
#include "src/field_policy.h"
#include "src/http.h"
#include "src/upstream_client.h"

namespace prometheus {
class Registry;
}

namespace tollgate::edge {

// The catch-all for every other /v1/... path (passthrough.cpp).
struct PassthroughOptions {
  bool enabled = true;                        // edge.passthrough.enabled; off: 404
  std::vector<std::string> allowed_prefixes;  // edge.passthrough.allowed_prefixes; empty: all
  // The Tollgate model whose route serves requests that name no model (files, batches...):
  // its lowest-id healthy upstream key (edge.passthrough.default_model); empty: such requests
  // get 404.
  std::string default_model;
  // A JSON body is read whole to find its `model` (edge.max_body_bytes; 413 above).
  uint64_t max_json_body_bytes = 4 * 1024 * 1024;
  // The least billing hold of a catch-all call (edge.passthrough.hold_micros), micro-units.
  int64_t hold_micros = 1;
};

struct ProxyOptions {
  int32_t max_attempts = 3;  // upper bound on the attempts of one request (router plan permitting)
  // The completion budget of a request that sets no max_tokens when its model has no default
  // (edge.quota_default_max_tokens); see ApplyCompletionBudget.
  int64_t default_max_tokens = 4096;
  // Bound of each stored body (request, response) for keys with store_bodies.
  size_t store_bodies_max_bytes = 65536;
  // Which request body fields are stripped, refused or priced (edge.strip_fields...).
  FieldPolicyOptions fields;
  UpstreamTimeouts upstream;
  UpstreamPoolOptions pool;
  PassthroughOptions passthrough;
  // The key of the sealed Responses API ids (responses_format.h): edge.response_id_secret, else
  // derived from the edge's service token, else random for this process (module.cpp).
  std::string response_id_secret;
  // Streamed uploads (upload.h): where an upload read ahead of routing spills past 256 KiB
  // (<edge.spool_dir>/uploads, unnamed files), and the body limit (edge.max_upload_bytes).
  std::string upload_spill_dir;
  uint64_t max_upload_bytes = 512ull * 1024 * 1024;
};

// The services the request path calls; they must outlive every handler.
struct EdgeClients {
  AuthClient& auth;
  QuotaClient& quota;
  RouterClient& router;
  BillingClient& billing;
};

// One handler per io_context; metrics are registered once on `registry`.
HandlerFactory MakeProxyHandlers(ProxyOptions options, EdgeClients clients,
                                 prometheus::Registry& registry);

}  // namespace tollgate::edge
