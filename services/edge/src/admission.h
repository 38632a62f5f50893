// Admission for inference, one step shared by every endpoint that calls an upstream model
// (completions.cpp: OpenAI's chat, completions, embeddings; messages.cpp: Anthropic's Messages
// API): the field policy, authentication and the route plan started together, the model
// allowlist, the completion budget, then quota admission and the billing hold concurrently on
// the canonical model and the worst case. Written in completions.cpp.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <optional>

#include "src/clients.h"
#include "src/openai.h"

namespace tollgate::edge {

class Exchange;

// The plan for an admitted request (x.record then holds the principal, reservation and hold);
// nullopt when it was refused: the refusal has been sent in the route's dialect.
boost::asio::awaitable<std::optional<RouteResult>> Admit(Exchange& x, ParsedRequest& request);

}  // namespace tollgate::edge
