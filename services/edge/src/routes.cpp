#include "src/routes.h"

#include <algorithm>
#include <stdexcept>

#include "src/endpoints.h"
#include "src/openai.h"

namespace tollgate::edge {

ErrorDialect DialectOfPath(std::string_view path) {
  if (path == "/v1/messages" || path.starts_with("/v1/messages/")) return ErrorDialect::kAnthropic;
  if (path.starts_with("/openai/")) return ErrorDialect::kAzure;
  return ErrorDialect::kOpenAi;
}

const RouteTable& EdgeRoutes() {
  constexpr auto kOpenAi = ErrorDialect::kOpenAi;
  constexpr auto kAnthropic = ErrorDialect::kAnthropic;
  constexpr auto kAzure = ErrorDialect::kAzure;
  // method, pattern, metrics label, error dialect, handler (endpoints.h says which file).
  static const RouteTable table({
      {"POST", "/v1/chat/completions", "chat_completions", kOpenAi, ChatCompletions},
      {"POST", "/v1/completions", "completions", kOpenAi, Completions},
      {"POST", "/v1/embeddings", "embeddings", kOpenAi, Embeddings},
      {"POST", "/v1/messages", "messages", kAnthropic, Messages},
      {"POST", "/v1/messages/count_tokens", "count_tokens", kAnthropic, CountTokens},
      {"*", "/v1/messages", "unknown", kAnthropic, MessagesMethodNotAllowed},
      {"*", "/v1/messages/count_tokens", "unknown", kAnthropic, MessagesMethodNotAllowed},
      // Anthropic's other Messages paths (batches) are not served: 404 in Anthropic's form, never
      // the /v1 catch-all (an OpenAI upstream has no such path).
      {"*", "/v1/messages/{path...}", "unknown", kAnthropic, MessagesNotFound},
      {"POST", "/v1/images/generations", "images_generations", kOpenAi, ImagesGenerations},
      {"POST", "/v1/images/edits", "images_edits", kOpenAi, ImagesEdits},
      {"POST", "/v1/images/variations", "images_variations", kOpenAi, ImagesVariations},
      {"POST", "/v1/audio/speech", "audio_speech", kOpenAi, AudioSpeech},
      {"POST", "/v1/audio/transcriptions", "audio_transcriptions", kOpenAi, AudioTranscriptions,
       /*streams_body=*/true},
      {"POST", "/v1/audio/translations", "audio_translations", kOpenAi, AudioTranslations,
       /*streams_body=*/true},
      {"POST", "/v1/moderations", "moderations", kOpenAi, Moderations},
      {"POST", "/v1/responses", "responses", kOpenAi, CreateResponse},
      {"GET", "/v1/responses/{response_id}", "response", kOpenAi, RetrieveResponse},
      {"DELETE", "/v1/responses/{response_id}", "response", kOpenAi, DeleteResponse},
      {"POST", "/v1/responses/{response_id}/cancel", "response_cancel", kOpenAi, CancelResponse},
      {"GET", "/v1/responses/{response_id}/input_items", "response_input_items", kOpenAi,
       ListResponseInputItems},
      {"GET", "/v1/models", "models", kOpenAi, ListModels},
      {"GET", "/v1/models/{model...}", "model", kOpenAi, RetrieveModel},
      {"GET", "/v1/usage", "usage", kOpenAi, OwnUsage},
      // Chat front-ends call these with or without /v1 in their base URL.
      {"GET", "/dashboard/billing/subscription", "billing_subscription", kOpenAi,
       BillingSubscription},
      {"GET", "/v1/dashboard/billing/subscription", "billing_subscription", kOpenAi,
       BillingSubscription},
      {"GET", "/dashboard/billing/usage", "billing_usage", kOpenAi, BillingUsage},
      {"GET", "/v1/dashboard/billing/usage", "billing_usage", kOpenAi, BillingUsage},
      // Azure OpenAI's data plane (the openai SDK's AzureOpenAI client): the deployment names
      // the model; ?api-version= is required.
      {"POST", "/openai/deployments/{deployment}/chat/completions", "azure_chat_completions",
       kAzure, AzureChatCompletions},
      {"POST", "/openai/deployments/{deployment}/completions", "azure_completions", kAzure,
       AzureCompletions},
      {"POST", "/openai/deployments/{deployment}/embeddings", "azure_embeddings", kAzure,
       AzureEmbeddings},
      // Last: every other /v1 path (files, batches, uploads...), relayed with its body streamed.
      {"*", "/v1/{path...}", "passthrough", kOpenAi, Passthrough, /*streams_body=*/true},
  });
  return table;
}

std::string_view RouteParams::Get(std::string_view name) const {
  for (const auto& [k, v] : values_)
    if (k == name) return v;
  return {};
}

void RouteParams::Add(std::string name, std::string value) {
  values_.emplace_back(std::move(name), std::move(value));
}

namespace {

bool ValidName(std::string_view name) {
  if (name.empty()) return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
      return false;
  return true;
}

bool ValidMethod(std::string_view method) {
  if (method == "*") return true;
  if (method.empty()) return false;
  for (char c : method)
    if (c < 'A' || c > 'Z') return false;
  return true;
}

}  // namespace

RouteTable::RouteTable(std::vector<Route> routes, ErrorDialect fallback)
    : routes_(std::move(routes)), fallback_(fallback) {
  for (const Route& route : routes_) {
    auto fail = [&route](const std::string& why) {
      throw std::invalid_argument("route " + route.method + " " + route.pattern + ": " + why);
    };
    if (!ValidMethod(route.method)) fail("the method is \"*\" or upper-case letters");
    if (route.handler == nullptr) fail("no handler");
    if (route.label.empty()) fail("no metrics label");
    std::string_view pattern = route.pattern;
    if (pattern.empty() || pattern[0] != '/') fail("a pattern starts with '/'");
    std::vector<Segment> segments;
    if (pattern != "/") {
      pattern.remove_prefix(1);
      while (true) {
        const size_t slash = pattern.find('/');
        std::string_view text = pattern.substr(0, slash);
        if (!segments.empty() && segments.back().kind == Segment::Kind::kTail)
          fail("{name...} must be the last segment");
        Segment segment;
        if (text.empty()) fail("empty segment");
        if (text.front() == '{') {
          if (text.back() != '}') fail("unclosed '{' in '" + std::string(text) + "'");
          std::string_view name = text.substr(1, text.size() - 2);
          segment.kind = Segment::Kind::kParam;
          if (name.size() > 3 && name.substr(name.size() - 3) == "...") {
            segment.kind = Segment::Kind::kTail;
            name.remove_suffix(3);
          }
          if (!ValidName(name)) fail("bad parameter name in '" + std::string(text) + "'");
          for (const Segment& s : segments)
            if (s.kind != Segment::Kind::kLiteral && s.text == name)
              fail("parameter '" + std::string(name) + "' twice");
          segment.text = std::string(name);
        } else {
          if (text.find_first_of("{}") != std::string_view::npos)
            fail("a parameter is a whole segment: '" + std::string(text) + "'");
          segment.text = std::string(text);
        }
        segments.push_back(std::move(segment));
        if (slash == std::string_view::npos) break;
        pattern.remove_prefix(slash + 1);
      }
    }
    segments_.push_back(std::move(segments));
  }
}

bool RouteTable::MatchPath(const std::vector<Segment>& segments, std::string_view path,
                           std::vector<std::pair<std::string, std::string_view>>& params) {
  params.clear();
  if (segments.empty()) return path == "/";
  for (const Segment& segment : segments) {
    if (path.empty() || path.front() != '/') return false;
    path.remove_prefix(1);
    if (segment.kind == Segment::Kind::kTail) {
      if (path.empty()) return false;
      params.emplace_back(segment.text, path);
      return true;
    }
    const size_t end = std::min(path.find('/'), path.size());
    std::string_view text = path.substr(0, end);
    if (segment.kind == Segment::Kind::kLiteral) {
      if (text != segment.text) return false;
    } else {
      if (text.empty()) return false;
      params.emplace_back(segment.text, text);
    }
    path.remove_prefix(end);
  }
  return path.empty();
}

RouteMatch RouteTable::Match(std::string_view method, std::string_view path) const {
  RouteMatch match;
  match.dialect = fallback_;
  bool path_known = false;
  std::vector<std::pair<std::string, std::string_view>> raw;
  for (size_t i = 0; i < routes_.size(); ++i) {
    if (!MatchPath(segments_[i], path, raw)) continue;
    const Route& route = routes_[i];
    if (route.method == "*" || route.method == method) {
      match.result = RouteMatch::Result::kFound;
      match.route = &route;
      match.dialect = route.dialect;
      match.allowed_methods.clear();
      for (auto& [name, value] : raw) match.params.Add(std::move(name), PercentDecode(value));
      return match;
    }
    if (!path_known) match.dialect = route.dialect;
    path_known = true;
    bool listed = false;
    for (const auto& m : match.allowed_methods) listed = listed || m == route.method;
    if (!listed) match.allowed_methods.push_back(route.method);
  }
  if (path_known) match.result = RouteMatch::Result::kMethodNotAllowed;
  return match;
}

}  // namespace tollgate::edge
