// The Responses API's wire format as the edge needs it (responses.cpp), as pure logic: the sealed
// response ids, usage from a response object, and the typed SSE stream (ids rewritten, usage
// kept). Unit-tested in test/responses_format_test.cpp.
//
// Sealed ids. A stored response lives only in the upstream account (key) that created it, and
// belongs to the Tollgate user who created it. The edge keeps no table of either: it hands the
// client `resp_tg<base64url(payload)><base64url(mac)>` instead of the upstream's `resp_...`, where
// the payload holds (upstream key id, Tollgate user id, canonical model, upstream id) and the mac
// is HMAC-SHA256 (first 16 bytes) of it under a secret every edge shares
// (edge.response_id_secret). Any edge can then open an id it never saw, and no client can make
// one: a forged or altered id is the same 404 as an unknown one. The id is signed, not encrypted:
// it shows the client its own user id, the upstream key's id and the upstream id (none is a
// secret). Sealing is deterministic, so the same upstream id always reads the same to the client.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "src/openai.h"

namespace tollgate::edge {

struct ResponseBinding {
  int64_t upstream_key_id = 0;
  std::string user_id;      // the Tollgate user who created it
  std::string model;        // the canonical model it was routed as (finds the key's attempt)
  std::string upstream_id;  // "resp_..." as the upstream named it
};

// Every sealed id starts with this (an OpenAI id starts with "resp_" too, so clients that check
// the prefix keep working).
inline constexpr std::string_view kSealedResponsePrefix = "resp_tg";
// Upper bounds of what is sealed: anything longer is not sealed (the upstream id passes as is,
// and is then unknown to every follow-up) and an id longer than the largest sealed one is
// refused before any work.
inline constexpr size_t kMaxUpstreamResponseIdBytes = 256;
// The largest sealed id: the prefix + base64 of 1 + 8 + 3 x (2 + 256) + 16 bytes (1073).
inline constexpr size_t kMaxSealedResponseIdBytes = 1100;

class ResponseIdSealer final {
 public:
  // `secret`: at least 16 bytes (anything shorter is a configuration error, checked by the
  // caller: see ResponseIdSecretProblem).
  explicit ResponseIdSealer(std::string secret) : secret_(std::move(secret)) {}

  // nullopt when a field is too long to seal.
  std::optional<std::string> Seal(const ResponseBinding& binding) const;
  // The binding, or nullopt for anything this secret did not seal.
  std::optional<ResponseBinding> Open(std::string_view id) const;

 private:
  std::string secret_;
};

// The secret of edge.response_id_secret when it is not set: derived (HMAC-SHA256) from the edge's
// service token, which every edge of a deployment shares.
std::string DeriveResponseIdSecret(std::string_view service_token);
// Why a configured secret is unusable, or nullopt.
std::optional<std::string> ResponseIdSecretProblem(std::string_view secret);

// Usage of a response object (usage.input_tokens, output_tokens with reasoning inside,
// input_tokens_details.cached_tokens) and its service_tier; `output_chars` (may be null) gets
// the generated characters (output text, refusals, function call names and arguments).
Usage ResponsesUsageFromResponse(const nlohmann::json& response, int64_t* output_chars);
// The same for a whole answer body (a response object).
Usage ResponsesUsageFromBody(std::string_view body, int64_t* output_chars);

// Background responses (`background: true`) are answered `queued` / `in_progress` before they
// run, so their create carries no usage: its record bills zero tokens (ResponsesUsageFromBody and
// ResponsesStream report a background response's usage as present and zero), and the tokens are
// billed once when the edge sees the response finished (a retrieve, a streamed retrieve, a
// cancel, or the create's own stream reaching its end), under a billing id derived from the
// response (BackgroundBillingId) so that every later sighting is the same record, which billing
// stores once (usage_records.request_id is UNIQUE and ingest inserts ON CONFLICT DO NOTHING).
struct FinishedBackground {
  std::string upstream_id;  // as the upstream named it
  Usage usage;
};
// The usage to bill of a response object created with background: true that has finished
// (status completed, incomplete, failed or cancelled) and carries usage; nullopt otherwise.
std::optional<FinishedBackground> FinishedBackgroundResponse(const nlohmann::json& response);
std::optional<FinishedBackground> FinishedBackgroundBody(std::string_view body);
// Billing's idempotency key for that usage: "resp_bg_" + 32 hex digits of SHA-256 over the
// upstream key id and the upstream response id (an upstream id is unique within its account).
std::string BackgroundBillingId(int64_t upstream_key_id, std::string_view upstream_id);

// Seals an upstream response id ("" when it cannot; the caller then keeps the upstream's).
using SealResponseId = std::function<std::string(std::string_view upstream_id)>;

// Rewrites, in a response object, `id` (when it is a response's) and `previous_response_id` with
// `seal`. False when the object is not a response.
bool SealResponseObject(nlohmann::ordered_json& response, const SealResponseId& seal);
// A whole answer body with its response ids sealed (a response object, or a deletion
// {"id","object":"response","deleted"}); other bodies come back unchanged.
std::string SealResponseBody(std::string_view body, const SealResponseId& seal);

// A Responses event stream as the client receives it: every event whose data carries a
// `response` object (response.created, .in_progress, .completed, .failed, .incomplete,
// .queued) gets its ids sealed; usage is read from the final response; the characters of the
// deltas are counted for the estimate when no usage arrives. There is no [DONE] in this stream.
class ResponsesStream final {
 public:
  explicit ResponsesStream(SealResponseId seal) : seal_(std::move(seal)) {}

  // Rewrites `event` in place (raw and data) when its response ids need sealing.
  void OnEvent(SseEvent& event);

  const Usage& usage() const { return usage_; }
  int64_t relayed_chars() const { return relayed_chars_; }
  // The highest sequence_number seen (-1: none), so an error event the edge adds follows it.
  int64_t last_sequence_number() const { return last_sequence_; }
  // A final event arrived (response.completed, .failed or .incomplete).
  bool ended() const { return ended_; }
  // The response was created with background: true (usage() is then zero: see above) and,
  // once its final event arrived, what to bill for it.
  bool background() const { return background_; }
  const std::optional<FinishedBackground>& finished_background() const {
    return finished_background_;
  }

 private:
  SealResponseId seal_;
  Usage usage_;
  int64_t relayed_chars_ = 0;
  int64_t last_sequence_ = -1;
  bool ended_ = false;
  bool background_ = false;
  std::optional<FinishedBackground> finished_background_;
};

// The stream's `error` event (ResponseErrorEvent) for a failure after the first byte.
std::string ResponsesErrorEvent(std::string_view code, std::string_view message,
                                int64_t sequence_number);

}  // namespace tollgate::edge
