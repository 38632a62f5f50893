// The handlers the route table (routes.cpp, EdgeRoutes) names, one file per endpoint family.
// Adding an endpoint: its handler here and in a file of its family (or a new one), one line in
// the table. A handler answers through its Exchange (exchange.h) and returns once the response
// went out.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <functional>

#include "src/admission.h"

namespace tollgate::edge {

class Exchange;
struct Principal;
struct ParsedRequest;
struct RouteResult;
enum class Endpoint;

// completions.cpp: inference (admission, the attempts, the relay, the usage record).
boost::asio::awaitable<void> ChatCompletions(Exchange& x);  // POST /v1/chat/completions
boost::asio::awaitable<void> Completions(Exchange& x);      // POST /v1/completions
boost::asio::awaitable<void> Embeddings(Exchange& x);       // POST /v1/embeddings
// The same, as Azure OpenAI's routes: POST /openai/deployments/{deployment}/<endpoint>
// ?api-version=; the deployment is the model (the body's `model` is ignored).
boost::asio::awaitable<void> AzureChatCompletions(Exchange& x);
boost::asio::awaitable<void> AzureCompletions(Exchange& x);
boost::asio::awaitable<void> AzureEmbeddings(Exchange& x);

// messages.cpp: Anthropic's Messages API in front (admission and attempts as above).
boost::asio::awaitable<void> Messages(Exchange& x);     // POST /v1/messages
boost::asio::awaitable<void> CountTokens(Exchange& x);  // POST /v1/messages/count_tokens
// Any other method on those two paths: Anthropic's 405 (before the catch-all sends it upstream).
boost::asio::awaitable<void> MessagesMethodNotAllowed(Exchange& x);
// Any other path under /v1/messages/: 404 not_found_error.
boost::asio::awaitable<void> MessagesNotFound(Exchange& x);

// media.cpp: images, audio and moderations (the same admission, attempts and relay; what each
// bills by: endpoint_kinds.h).
boost::asio::awaitable<void> ImagesGenerations(Exchange& x);    // POST /v1/images/generations
boost::asio::awaitable<void> ImagesEdits(Exchange& x);          // POST /v1/images/edits
boost::asio::awaitable<void> ImagesVariations(Exchange& x);     // POST /v1/images/variations
boost::asio::awaitable<void> AudioSpeech(Exchange& x);          // POST /v1/audio/speech
boost::asio::awaitable<void> AudioTranscriptions(Exchange& x);  // POST /v1/audio/transcriptions
boost::asio::awaitable<void> AudioTranslations(Exchange& x);    // POST /v1/audio/translations
boost::asio::awaitable<void> Moderations(Exchange& x);          // POST /v1/moderations

// The inference path those share (parse, Admit, the attempts), for endpoints in other files;
// PlanPin: admission.h.
boost::asio::awaitable<void> Infer(Exchange& x, Endpoint endpoint, PlanPin pin);

// responses.cpp: the Responses API (created, then found again on the upstream key that holds it).
boost::asio::awaitable<void> CreateResponse(Exchange& x);    // POST /v1/responses
boost::asio::awaitable<void> RetrieveResponse(Exchange& x);  // GET /v1/responses/{response_id}
boost::asio::awaitable<void> DeleteResponse(Exchange& x);    // DELETE /v1/responses/{response_id}
boost::asio::awaitable<void> CancelResponse(Exchange& x);    // POST .../{response_id}/cancel
boost::asio::awaitable<void> ListResponseInputItems(Exchange& x);  // GET .../input_items

// models.cpp: the models the calling key may use.
boost::asio::awaitable<void> ListModels(Exchange& x);     // GET /v1/models
boost::asio::awaitable<void> RetrieveModel(Exchange& x);  // GET /v1/models/{model...}

// usage.cpp: the caller's own usage and billing account.
boost::asio::awaitable<void> OwnUsage(Exchange& x);  // GET /v1/usage
boost::asio::awaitable<void> BillingSubscription(
    Exchange& x);                                        // GET [/v1]/dashboard/billing/subscription
boost::asio::awaitable<void> BillingUsage(Exchange& x);  // GET [/v1]/dashboard/billing/usage

// passthrough.cpp: every other /v1/... path, relayed as it is (request body streamed).
boost::asio::awaitable<void> Passthrough(Exchange& x);  // * /v1/{path...}

}  // namespace tollgate::edge
