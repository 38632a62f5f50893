// What the relay (relay.cpp) needs of the Responses API endpoints (responses.cpp): the sealing
// of the response ids the client receives (responses_format.h), and the billing of a background
// response seen finished.
#pragma once

#include "src/clients.h"
#include "src/responses_format.h"

namespace tollgate::edge {

class Exchange;

// Seals an upstream response id answered through `attempt` for the request's user and model
// (x.record), under the edge's edge.response_id_secret.
SealResponseId ResponseSealFor(const Exchange& x, const UpstreamAttempt& attempt);

// Bills a finished background response once (responses_format.h, FinishedBackground): a usage
// record of its own for billing, under BackgroundBillingId, for the request's user and model
// (x.record), whichever request saw it finish. Quota is not charged (its settlements are per
// admitted request; see docs/architecture.md).
void BillFinishedBackground(Exchange& x, const UpstreamAttempt& attempt,
                            const FinishedBackground& finished);

}  // namespace tollgate::edge
