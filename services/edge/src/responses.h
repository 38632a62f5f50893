// What the relay (relay.cpp) needs of the Responses API endpoints (responses.cpp): the sealing
// of the response ids the client receives (responses_format.h).
#pragma once

#include "src/clients.h"
#include "src/responses_format.h"

namespace tollgate::edge {

class Exchange;

// Seals an upstream response id answered through `attempt` for the request's user and model
// (x.record), under the edge's edge.response_id_secret.
SealResponseId ResponseSealFor(const Exchange& x, const UpstreamAttempt& attempt);

}  // namespace tollgate::edge
