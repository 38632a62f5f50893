// What a client may ask of the operator's upstream account, decided on the top-level fields of a
// request body. Some fields cost the operator more (`service_tier: "priority"`) or keep data in
// the operator's upstream account (`store: true`), so each field is allowed, stripped (removed
// before the body goes upstream), or refused (400), and `service_tier` must be one the operator
// allows (edge.strip_fields, edge.reject_fields, edge.allowed_service_tiers).
//
// Pure logic over the parsed JSON body: no I/O, shared by every endpoint whose body the edge
// parses. Per endpoint kind, some fields are never stripped (EndpointKind::kept_fields,
// endpoint_kinds.h): on /v1/responses `store` defaults to true upstream, so stripping a client's
// `store: false` would store what the client asked not to.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::edge {

struct FieldPolicyOptions {
  // Removed from the body before it goes upstream; by default `store`, so nothing is kept in the
  // operator's upstream account unless the operator allows it.
  std::vector<std::string> strip_fields = {"store"};
  // A request carrying one of these is refused (400, param = the field).
  std::vector<std::string> reject_fields;
  // The `service_tier` values a client may ask for; any other value is refused (400). Empty: no
  // value is accepted.
  std::vector<std::string> allowed_service_tiers = {"auto", "default"};
};

struct FieldRefusal {
  std::string message;
  std::string param;
};

struct FieldDecision {
  std::optional<FieldRefusal> refusal;  // set: answer 400 invalid_request_error, nothing else
  // The tier the client asked for (as sent, when it reaches the upstream); empty: none, so the
  // upstream's default. Billing prices the hold with it.
  std::string service_tier;
  // Whether a field was removed from the body (the body then no longer says what the client sent).
  bool stripped = false;
};

class FieldPolicy final {
 public:
  FieldPolicy() : FieldPolicy(FieldPolicyOptions{}) {}
  explicit FieldPolicy(FieldPolicyOptions options);

  // Why these options cannot be used (a field both stripped and refused, a name that is not a
  // field name, the edge's own fields stripped), naming the config key; nullopt: usable.
  static std::optional<std::string> Check(const FieldPolicyOptions& options);

  // Refuses, then strips, in place. Fields not named by the policy are untouched and the order
  // of the remaining fields is kept. A field whose value is null counts as absent. `keep`: the
  // endpoint kind's fields that are never stripped (they can still be refused).
  FieldDecision Apply(nlohmann::ordered_json& body,
                      std::span<const std::string_view> keep = {}) const;

 private:
  FieldPolicyOptions options_;
};

// A top-level field name the policy can name: 1..64 of [A-Za-z0-9_.-].
bool IsFieldName(std::string_view name);

}  // namespace tollgate::edge
