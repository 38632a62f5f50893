#include "src/field_policy.h"

#include <algorithm>

namespace tollgate::edge {
namespace {

constexpr const char* kServiceTier = "service_tier";

// The edge reads and rewrites these itself (the model each attempt asks for, streaming and the
// usage chunk every stream is billed from), so they cannot be stripped.
constexpr std::string_view kEdgeOwnFields[] = {"model", "stream", "stream_options"};

bool Contains(const std::vector<std::string>& list, std::string_view name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

std::string Joined(const std::vector<std::string>& list) {
  std::string out;
  for (const auto& item : list) out += (out.empty() ? "'" : ", '") + item + "'";
  return out;
}

}  // namespace

bool IsFieldName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
  });
}

FieldPolicy::FieldPolicy(FieldPolicyOptions options) : options_(std::move(options)) {}

std::optional<std::string> FieldPolicy::Check(const FieldPolicyOptions& options) {
  const std::pair<const char*, const std::vector<std::string>*> lists[] = {
      {"edge.strip_fields", &options.strip_fields},
      {"edge.reject_fields", &options.reject_fields},
      {"edge.allowed_service_tiers", &options.allowed_service_tiers}};
  for (const auto& [key, list] : lists)
    for (const auto& name : *list)
      if (!IsFieldName(name))
        return std::string("invalid value for ") + key + ": '" + name.substr(0, 64) +
               "' is not a name (1 to 64 of A-Z a-z 0-9 _ - .)";
  for (const auto& name : options.strip_fields) {
    if (Contains(options.reject_fields, name))
      return "invalid value for edge.strip_fields: '" + name +
             "' is also in edge.reject_fields; a field is either stripped or refused";
    if (std::find(std::begin(kEdgeOwnFields), std::end(kEdgeOwnFields), name) !=
        std::end(kEdgeOwnFields))
      return "invalid value for edge.strip_fields: '" + name +
             "' is read by the edge itself and cannot be stripped (it can be refused)";
  }
  return std::nullopt;
}

FieldDecision FieldPolicy::Apply(nlohmann::ordered_json& body,
                                 std::span<const std::string_view> keep) const {
  FieldDecision decision;
  if (!body.is_object()) return decision;
  for (const auto& name : options_.reject_fields) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) continue;
    decision.refusal =
        FieldRefusal{"The parameter '" + name + "' is not allowed on this server.", name};
    return decision;
  }
  // A stripped service_tier never reaches the upstream, so whatever it says does not matter.
  auto stripped = [&](std::string_view name) {
    return Contains(options_.strip_fields, name) &&
           std::find(keep.begin(), keep.end(), name) == keep.end();
  };
  if (!stripped(kServiceTier)) {
    auto tier = body.find(kServiceTier);
    if (tier != body.end() && !tier->is_null()) {
      if (!tier->is_string()) {
        decision.refusal =
            FieldRefusal{"Invalid type for 'service_tier': expected a string.", kServiceTier};
        return decision;
      }
      const auto& value = tier->get_ref<const std::string&>();
      if (!Contains(options_.allowed_service_tiers, value)) {
        std::string message = "Invalid value for 'service_tier': '" + value.substr(0, 64) + "'. ";
        message += options_.allowed_service_tiers.empty()
                       ? std::string("This server does not accept a service_tier.")
                       : "This server accepts " + Joined(options_.allowed_service_tiers) + ".";
        decision.refusal = FieldRefusal{std::move(message), kServiceTier};
        return decision;
      }
      decision.service_tier = value;
    }
  }
  for (const auto& name : options_.strip_fields)
    if (stripped(name) && body.erase(name) > 0) decision.stripped = true;
  return decision;
}

}  // namespace tollgate::edge
