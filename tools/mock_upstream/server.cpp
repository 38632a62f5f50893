// The mock upstream's HTTP side: one io_context run by N threads, one coroutine per connection on
// its own strand. Responses are framed by hand (head + body in one gathered write, chunked events
// one write each) so the hot path is a parse, a few appends and a writev.
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "media.h"
#include "mock_upstream.h"

namespace tollgate::mock {
namespace {

// `name=true` in a query string (without the '?').
bool HasQueryFlag(std::string_view query, std::string_view name) {
  for (size_t pos = 0; pos < query.size();) {
    size_t amp = query.find('&', pos);
    std::string_view param = query.substr(pos, amp - pos);
    if (param.size() == name.size() + 5 && param.starts_with(name) &&
        param.substr(name.size()) == "=true")
      return true;
    pos = amp == std::string_view::npos ? query.size() : amp + 1;
  }
  return false;
}

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using Json = nlohmann::json;
using Request = http::request<http::string_body>;

constexpr uint64_t kBodyLimit = 16 * 1024 * 1024;
// POST /v1/files bodies are scanned as they arrive, never held: OpenAI takes files up to 512 MB.
constexpr uint64_t kUploadLimit = 512ull * 1024 * 1024;
// Audio to transcribe or translate: OpenAI takes files up to 25 MB (its 413 names the limit).
constexpr uint64_t kAudioLimit = 26'214'400;
constexpr size_t kUploadReadBytes = 64 * 1024;
constexpr uint32_t kHeaderLimit = 64 * 1024;
constexpr size_t kRecentRequests = 32;
// Named because g++ 12 rejects string literals passed straight to a coroutine ("array used as
// initializer").
constexpr std::string_view kHealthy = R"({"status":"ok"})";
constexpr std::string_view kOk = R"({"ok":true})";
constexpr std::string_view kNoRequest = R"({"error":"no request yet"})";
constexpr std::string_view kUnknownControl = R"({"error":"unknown control endpoint"})";
constexpr std::string_view kJson = "application/json";
constexpr std::string_view kOctetStream = "application/octet-stream";
constexpr std::string_view kNoHeaders;

enum class Endpoint {
  kNone,
  kChat,
  kText,
  kEmbeddings,
  kModels,
  kModel,
  kMessages,
  kCountTokens,
  kFiles,        // GET /v1/files
  kFile,         // GET /v1/files/{id}
  kDeleteFile,   // DELETE /v1/files/{id}
  kFileContent,  // GET /v1/files/{id}/content
  kBatches,      // POST /v1/batches
  kBatch,        // GET /v1/batches/{id}
  kImagesGenerations,
  kImagesEdits,
  kImagesVariations,
  kSpeech,
  kTranscriptions,
  kTranslations,
  kModerations,
  kResponses,       // POST /v1/responses
  kResponseStored,  // GET, DELETE /v1/responses/{id}, POST .../cancel, GET .../input_items
};

// The endpoints whose body is multipart/form-data.
bool IsMultipart(Endpoint e) {
  return e == Endpoint::kImagesEdits || e == Endpoint::kImagesVariations ||
         e == Endpoint::kTranscriptions || e == Endpoint::kTranslations;
}

struct Route {
  Endpoint endpoint = Endpoint::kNone;
  bool azure = false;
  bool api_version = false;
  bool anthropic = false;            // the Messages API: x-api-key, Anthropic error bodies
  std::string_view deployment;       // Azure: also the model named in the reply
  std::string_view model_id;         // GET /v1/models/{id}
  std::string_view object_id;        // a file's or a batch's id
  std::string_view response_id;      // /v1/responses/{id}...
  std::string_view response_action;  // "", "cancel", "input_items"
};

Route ParseRoute(http::verb method, std::string_view path, std::string_view query) {
  Route route;
  const bool post = method == http::verb::post;
  const bool get = method == http::verb::get;
  auto api = [&](std::string_view rest) {
    if (post && rest == "/chat/completions") return Endpoint::kChat;
    if (post && rest == "/completions") return Endpoint::kText;
    if (post && rest == "/embeddings") return Endpoint::kEmbeddings;
    if (post && rest == "/images/generations") return Endpoint::kImagesGenerations;
    if (post && rest == "/images/edits") return Endpoint::kImagesEdits;
    if (post && rest == "/images/variations") return Endpoint::kImagesVariations;
    if (post && rest == "/audio/speech") return Endpoint::kSpeech;
    if (post && rest == "/audio/transcriptions") return Endpoint::kTranscriptions;
    if (post && rest == "/audio/translations") return Endpoint::kTranslations;
    if (post && rest == "/moderations") return Endpoint::kModerations;
    return Endpoint::kNone;
  };
  constexpr std::string_view kAzure = "/openai/deployments/";
  if (path.starts_with("/v1/")) {
    std::string_view rest = path.substr(3);
    if (get && rest == "/models") {
      route.endpoint = Endpoint::kModels;
    } else if (get && rest.starts_with("/models/") && rest.size() > 8) {
      route.endpoint = Endpoint::kModel;
      route.model_id = rest.substr(8);
    } else if (get && rest == "/files") {
      route.endpoint = Endpoint::kFiles;
    } else if (rest.starts_with("/files/") && rest.size() > 7) {
      std::string_view id = rest.substr(7);
      const bool content = id.ends_with("/content");
      if (content) id.remove_suffix(8);
      if (!id.empty() && id.find('/') == std::string_view::npos) {
        route.object_id = id;
        if (get) route.endpoint = content ? Endpoint::kFileContent : Endpoint::kFile;
        if (method == http::verb::delete_ && !content) route.endpoint = Endpoint::kDeleteFile;
      }
    } else if (post && rest == "/batches") {
      route.endpoint = Endpoint::kBatches;
    } else if (get && rest.starts_with("/batches/") && rest.size() > 9 &&
               rest.find('/', 9) == std::string_view::npos) {
      route.endpoint = Endpoint::kBatch;
      route.object_id = rest.substr(9);
    } else if (post && rest == "/responses") {
      route.endpoint = Endpoint::kResponses;
    } else if (rest.starts_with("/responses/") && rest.size() > 11) {
      std::string_view tail = rest.substr(11);
      size_t slash = tail.find('/');
      route.response_id = tail.substr(0, slash);
      route.response_action = slash == std::string_view::npos ? "" : tail.substr(slash + 1);
      const bool del = method == http::verb::delete_;
      if ((route.response_action.empty() && (get || del)) ||
          (route.response_action == "cancel" && post) ||
          (route.response_action == "input_items" && get))
        route.endpoint = Endpoint::kResponseStored;
    } else if (post && (rest == "/messages" || rest == "/messages/count_tokens")) {
      route.anthropic = true;
      route.endpoint = rest == "/messages" ? Endpoint::kMessages : Endpoint::kCountTokens;
    } else {
      route.endpoint = api(rest);
    }
  } else if (path.starts_with(kAzure)) {
    std::string_view rest = path.substr(kAzure.size());
    size_t slash = rest.find('/');
    if (slash != 0 && slash != std::string_view::npos) {
      route.azure = true;
      route.deployment = rest.substr(0, slash);
      route.endpoint = api(rest.substr(slash));
    }
    for (size_t pos = 0; pos < query.size();) {
      size_t amp = query.find('&', pos);
      std::string_view param = query.substr(pos, amp - pos);
      if (param.starts_with("api-version=") && param.size() > 12) route.api_version = true;
      pos = amp == std::string_view::npos ? query.size() : amp + 1;
    }
  }
  // OpenAI-compatible providers serve the same endpoints under their own prefixes (DeepSeek
  // none, Gemini /v1beta/openai, Groq /openai/v1, OpenRouter /api/v1): any prefix is accepted
  // before the endpoint's path; /_mock/requests shows the exact target called.
  if (route.endpoint == Endpoint::kNone && !route.azure && !route.anthropic && post) {
    for (std::string_view suffix : {"/chat/completions", "/completions", "/embeddings"}) {
      if (path.ends_with(suffix)) {
        route.endpoint = api(suffix);
        break;
      }
    }
  }
  return route;
}

std::string_view BearerToken(std::string_view authorization) {
  if (authorization.size() < 7 || !beast::iequals(authorization.substr(0, 7), "bearer ")) return {};
  std::string_view token = authorization.substr(7);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  return token;
}

std::string Redact(std::string_view key) {
  if (key.size() <= 8) return "****";
  return std::string(key.substr(0, 4)) + "****" + std::string(key.substr(key.size() - 2));
}

std::string PercentDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned value = 0;
    if (text[i] == '%' && i + 2 < text.size() &&
        std::from_chars(text.data() + i + 1, text.data() + i + 3, value, 16).ptr ==
            text.data() + i + 3) {
      out.push_back(static_cast<char>(value));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

void AppendNumber(std::string& out, uint64_t value, int base = 10) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value, base);
  out.append(buf, end);
}

// x-mock-* request headers, applied on top of everything else.
bool OverlayHeaderKnobs(const Request& req, Behavior* behavior, std::string* error) {
  constexpr std::string_view kPrefix = "x-mock-";
  for (const auto& field : req) {
    std::string_view name = field.name_string();
    if (name.size() <= kPrefix.size() || !beast::iequals(name.substr(0, kPrefix.size()), kPrefix)) {
      continue;
    }
    if (!SetBehaviorField(behavior, name.substr(kPrefix.size()), field.value(), error)) {
      *error = "invalid header " + std::string(name) + ": " + *error;
      return false;
    }
  }
  return true;
}

class Server;

// One keep-alive connection. Shared ownership because the peer watch (see WatchPeer) can still be
// queued when the connection's coroutine ends.
class Session final : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, Server& server)
      : socket_(std::move(socket)), timer_(socket_.get_executor()), server_(server) {}

  static awaitable<void> Run(std::shared_ptr<Session> self);
  asio::any_io_executor executor() { return socket_.get_executor(); }

 private:
  awaitable<void> Loop();
  // Each handler answers one request; false when the connection must close afterwards.
  awaitable<bool> Handle(Request& req);
  awaitable<bool> HandleApi(Request& req, std::string_view path, std::string_view query);
  // POST /v1/files: the multipart body is scanned as it arrives (never held whole).
  awaitable<bool> HandleUpload(http::request_parser<http::string_body>& parser);
  awaitable<bool> HandleControl(Request& req, std::string_view path, std::string_view query);
  awaitable<bool> Respond(int32_t status, std::string_view body,
                          std::string_view extra_headers = {},
                          std::string_view content_type = kJson);
  awaitable<bool> RespondError(const ApiError& error, std::string_view extra_headers = {});
  awaitable<bool> Stream(EventStream& events, const Behavior& behavior,
                         std::string_view content_type = "text/event-stream; charset=utf-8");
  // Waits `ms`; false as soon as the client disconnects.
  awaitable<bool> PauseWhileConnected(int32_t ms);
  awaitable<void> HoldUntilClientLeaves();
  void WatchPeer();
  void ResetConnection();
  void AppendCommonHeaders(std::string& head);
  void AppendRequestId(std::string& out) const {
    out += "req_mock";
    const size_t at = out.size();
    AppendNumber(out, seq_, 16);
    out.insert(at, 16 - std::min<size_t>(16, out.size() - at), '0');  // as AppendHex pads
  }

  tcp::socket socket_;
  asio::steady_timer timer_;
  beast::flat_buffer buffer_;
  Server& server_;
  std::string head_;  // reused across requests: the response head
  std::string body_;  // reused across requests: the response body or the current event
  uint64_t seq_ = 0;
  int32_t status_ = 0;
  bool keep_alive_ = true;
  bool http10_ = false;
  bool in_api_ = false;     // a failed write then counts as a cancelled request
  bool anthropic_ = false;  // the request is in the Messages API's dialect
  bool client_gone_ = false;
};

class Server final {
 public:
  explicit Server(const Options& options)
      : options_(options),
        state_(options.key_behaviors),
        require_keys_(options.require_keys.begin(), options.require_keys.end()),
        models_(options.models.begin(), options.models.end()),
        models_json_(ModelListJson(options.models)) {}

  int Run();

  MockState& state() { return state_; }
  FileStore& files() { return files_; }
  ResponsesStore& responses() { return responses_; }
  const Options& options() const { return options_; }
  const std::string& models_json() const { return models_json_; }
  uint64_t NextSeq() { return seq_.fetch_add(1, std::memory_order_relaxed) + 1; }
  bool KeyAllowed(std::string_view key) const {
    return require_keys_.empty() || require_keys_.count(std::string(key)) > 0;
  }
  bool HasModel(const std::string& id) const {
    return models_.count(id) > 0 || id.starts_with("mock-");
  }

  // Keeps the last few API requests for GET /_mock/requests. The request is moved in, so this
  // costs a lock and the release of the oldest one, not a copy.
  void Record(Request&& req) {
    std::lock_guard lock(recent_mu_);
    if (recent_.size() == kRecentRequests) recent_.pop_front();
    recent_.push_back(std::move(req));
  }
  Json RecentJson(size_t limit) const {
    Json list = Json::array();
    std::lock_guard lock(recent_mu_);
    size_t skip = recent_.size() > limit ? recent_.size() - limit : 0;
    for (size_t i = skip; i < recent_.size(); ++i) {
      const Request& req = recent_[i];
      Json headers = Json::object();
      for (const auto& field : req) {
        std::string name(field.name_string());
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        headers[name] = std::string(field.value());
      }
      Json body = Json::parse(req.body(), nullptr, false);
      list.push_back({{"method", std::string(req.method_string())},
                      {"target", std::string(req.target())},
                      {"headers", std::move(headers)},
                      {"body", body.is_discarded() ? Json(req.body()) : std::move(body)}});
    }
    return list;
  }
  void ClearRecent() {
    std::lock_guard lock(recent_mu_);
    recent_.clear();
  }

 private:
  awaitable<void> Accept(tcp::acceptor& acceptor);

  const Options options_;
  MockState state_;
  FileStore files_;
  ResponsesStore responses_;
  const std::unordered_set<std::string> require_keys_;
  const std::unordered_set<std::string> models_;
  const std::string models_json_;
  asio::io_context ioc_;
  std::atomic<uint64_t> seq_{0};
  mutable std::mutex recent_mu_;
  std::deque<Request> recent_;
};

struct InFlight {
  MockState& state;
  ~InFlight() { state.Finish(); }
};

// ---------------------------------------------------------------------------------------------

awaitable<void> Session::Run(std::shared_ptr<Session> self) {
  try {
    co_await self->Loop();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mock-upstream: connection error: %s\n", e.what());
  }
  beast::error_code ec;
  if (self->socket_.is_open()) {
    self->socket_.shutdown(tcp::socket::shutdown_send, ec);
    self->socket_.close(ec);
  }
}

awaitable<void> Session::Loop() {
  beast::error_code ec;
  socket_.set_option(tcp::no_delay(true), ec);
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(kHeaderLimit);
    // An upload's limit until the head says what the request is (a Content-Length over the
    // limit fails the head's read).
    parser.body_limit(kUploadLimit);
    co_await http::async_read_header(socket_, buffer_, parser,
                                     asio::redirect_error(use_awaitable, ec));
    const bool upload =
        !ec && parser.get().method() == http::verb::post &&
        parser.get().target().substr(0, parser.get().target().find('?')) == "/v1/files";
    const auto target = parser.get().target();
    const std::string_view path =
        ec ? std::string_view()
           : std::string_view(target.data(), target.size()).substr(0, target.find('?'));
    const bool audio =
        path.ends_with("/audio/transcriptions") || path.ends_with("/audio/translations");
    const uint64_t limit = audio ? kAudioLimit : kBodyLimit;
    if (!ec && !upload) {
      parser.body_limit(limit);
      if (parser.content_length().value_or(0) > limit) ec = http::error::body_limit;
    }
    if (!ec && beast::iequals(parser.get()[http::field::expect], "100-continue")) {
      constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      co_await asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                                 asio::redirect_error(use_awaitable, ec));
    }
    if (!ec && upload) {
      bool keep = false;
      try {
        keep = co_await HandleUpload(parser);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "mock-upstream: upload failed: %s\n", e.what());
      }
      if (!keep) co_return;
      continue;
    }
    if (!ec && !parser.is_done()) {
      co_await http::async_read(socket_, buffer_, parser, asio::redirect_error(use_awaitable, ec));
    }
    if (ec == http::error::body_limit) {  // a Content-Length over the limit fails the header read
      keep_alive_ = false;
      anthropic_ = false;  // not routed yet: the OpenAI error format
      ApiError error;
      error.status = 413;
      error.message = upload  ? "Request body too large (limit 512 MiB)."
                      : audio ? "Maximum content size limit (26214400) exceeded."
                              : "Request body too large (limit 16 MiB).";
      co_await RespondError(error);
      // Read what the client is still sending, so closing does not reset the connection before
      // it has read our answer.
      socket_.shutdown(tcp::socket::shutdown_send, ec);
      co_await HoldUntilClientLeaves();
      co_return;
    }
    if (ec) co_return;
    Request req = parser.release();
    bool keep = false;
    std::string failure;
    try {
      keep = co_await Handle(req);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (!failure.empty()) {  // a bug, not a knob: say so, unless a reply had already started
      std::fprintf(stderr, "mock-upstream: request failed: %s\n", failure.c_str());
      if (status_ == 0) {
        keep_alive_ = false;
        ApiError error = ErrorForStatus(500, std::nullopt);
        error.message = "mock upstream bug: " + failure;
        co_await RespondError(error);
      }
      co_return;
    }
    if (!keep) co_return;
  }
}

awaitable<bool> Session::Handle(Request& req) {
  const auto start = std::chrono::steady_clock::now();
  keep_alive_ = req.keep_alive();
  http10_ = req.version() == 10;
  seq_ = server_.NextSeq();
  status_ = 0;
  anthropic_ = false;
  std::string_view target = req.target();
  size_t question = target.find('?');
  std::string_view path = target.substr(0, question);
  std::string_view query =
      question == std::string_view::npos ? std::string_view() : target.substr(question + 1);
  const bool verbose = server_.options().verbose;
  std::string line;  // the request line for the log, copied because HandleApi gives req away
  if (verbose) line = std::string(req.method_string()) + " " + std::string(target);

  bool keep = false;
  if (path.starts_with("/_mock/")) {
    keep = co_await HandleControl(req, path, query);
  } else {
    in_api_ = true;
    keep = co_await HandleApi(req, path, query);
    in_api_ = false;
  }
  if (verbose) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - start)
                  .count();
    std::fprintf(stderr, "mock-upstream: %s -> %d%s (%lld ms)\n", line.c_str(), status_,
                 client_gone_ ? " client gone" : "", static_cast<long long>(ms));
  }
  co_return keep;
}

awaitable<bool> Session::HandleApi(Request& req, std::string_view path, std::string_view query) {
  MockState& state = server_.state();
  const Route route = ParseRoute(req.method(), path, query);
  anthropic_ = route.anthropic;
  // The Messages API takes x-api-key; @anthropic-ai/sdk 1.x sends the key as a bearer token.
  std::string_view key = route.anthropic ? req["x-api-key"]
                         : route.azure   ? req["api-key"]
                                         : BearerToken(req[http::field::authorization]);
  if (route.anthropic && key.empty()) key = BearerToken(req[http::field::authorization]);
  const std::optional<Behavior> key_behavior = state.Admit(key, path);
  InFlight in_flight{state};

  // Checks in the order a real provider makes them; each answers before the request is recorded.
  std::optional<ApiError> early;
  if (route.endpoint == Endpoint::kNone) {
    early.emplace();
    early->status = 404;
    early->message =
        "Invalid URL (" + std::string(req.method_string()) + " " + std::string(path) + ")";
  } else if (route.azure && !route.api_version) {
    early.emplace();
    early->status = 404;
    early->message = "Resource not found";
    early->code = "404";
  } else if (route.anthropic && key.empty()) {
    early = AnthropicErrorForStatus(401, std::nullopt);
    early->message = "x-api-key header is required";
  } else if (route.anthropic && !server_.KeyAllowed(key)) {
    early = AnthropicErrorForStatus(401, std::nullopt);
  } else if (route.anthropic && req["anthropic-version"].empty()) {
    early = AnthropicErrorForStatus(400, std::nullopt);
    early->message = "anthropic-version: header is required";
  } else if (key.empty()) {
    early = ErrorForStatus(401, std::nullopt);
    early->message = route.azure
                         ? "Access denied due to missing subscription key. Make sure to include "
                           "subscription key when making requests to an API."
                         : "You didn't provide an API key. You need to provide your API key in an "
                           "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                           "YOUR_KEY).";
  } else if (!server_.KeyAllowed(key)) {
    early = ErrorForStatus(401, std::nullopt);
    early->message = "Incorrect API key provided: " + Redact(key) + ".";
  }
  Json body;
  std::optional<media::Form> form;
  if (!early && req.method() == http::verb::post && IsMultipart(route.endpoint)) {
    std::string form_error;
    form = media::ParseForm(req[http::field::content_type], req.body(), &form_error);
    if (!form) {
      early.emplace();
      early->message = std::move(form_error);
    } else {
      body = Json::object();  // the text fields, as a JSON body's would be
      for (const auto& [name, value] : form->fields) body[name] = value;
    }
  } else if (!early && req.method() == http::verb::post) {
    body = Json::parse(req.body(), nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() && route.anthropic) {
      early = AnthropicErrorForStatus(400, std::nullopt);
      early->message = "There was an error parsing the body of your request.";
    } else if (body.is_discarded()) {
      early.emplace();
      early->message =
          "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
          "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
          "sent was not valid JSON.)";
    }
  }
  std::string model;
  if (route.azure) {
    model = route.deployment;
  } else if (route.endpoint == Endpoint::kModel) {
    model = PercentDecode(route.model_id);
  } else if (body.is_object() && body.contains("model") && body["model"].is_string()) {
    model = body["model"].get<std::string>();
  }
  Behavior behavior = server_.options().defaults;
  if (key_behavior) behavior.Overlay(*key_behavior);
  // Directives come from the model a completion/embedding is asked of, not from a model lookup.
  if (route.endpoint != Endpoint::kModel) behavior.Overlay(ParseModelDirectives(model));
  std::string header_error;
  if (!early && !OverlayHeaderKnobs(req, &behavior, &header_error)) {
    early.emplace();
    early->message = std::move(header_error);
  }
  // Copies of what the Responses API needs after req is gone (responses are stored per key).
  const std::string response_key(key);
  const std::string response_id = PercentDecode(route.response_id);
  const std::string response_action(route.response_action);
  const std::string method_name(req.method_string());
  const std::string query_copy(query);
  // From here on, nothing may look at req (nor at path, key or route's views into it).
  server_.Record(std::move(req));
  if (early) co_return co_await RespondError(*early);

  if (behavior.hang.value_or(false)) {
    co_await HoldUntilClientLeaves();
    state.CountCancelled();
    co_return false;
  }
  if (behavior.ttfb_ms.value_or(0) > 0 && !co_await PauseWhileConnected(*behavior.ttfb_ms)) {
    state.CountCancelled();
    co_return false;
  }
  int32_t status = behavior.status.value_or(0);
  if (status == 0 && behavior.retry_after_s) status = 429;
  if (status >= 400) {
    std::string extra;
    if (behavior.retry_after_s) {
      extra = "retry-after: ";
      AppendNumber(extra, static_cast<uint64_t>(*behavior.retry_after_s));
      extra += "\r\n";
    }
    // Built outside the co_await: g++ 12 miscompiles temporaries inside one (a double free).
    const ApiError error = route.anthropic ? AnthropicErrorForStatus(status, behavior.error_code)
                                           : ErrorForStatus(status, behavior.error_code);
    co_return co_await RespondError(error, extra);
  }

  const std::string_view model_override = route.azure ? std::string_view(model) : "";
  std::optional<Completion> completion;
  ApiError error;
  body_.clear();
  switch (route.endpoint) {
    case Endpoint::kModels:
      body_ = server_.models_json();
      break;
    case Endpoint::kModel:
      if (!server_.HasModel(model)) {
        error = ErrorForStatus(404, std::nullopt);
        error.message = "The model '" + model + "' does not exist";
        error.param = "model";
        co_return co_await RespondError(error);
      }
      AppendModelJson(body_, model);
      break;
    case Endpoint::kEmbeddings:
      if (!BuildEmbeddings(body, model_override, &body_, &error)) {
        co_return co_await RespondError(error);
      }
      break;
    case Endpoint::kChat:
    case Endpoint::kText:
      completion = Completion::Plan(
          route.endpoint == Endpoint::kChat ? CompletionKind::kChat : CompletionKind::kText, body,
          model_override, behavior, seq_, static_cast<int64_t>(std::time(nullptr)), &error);
      if (!completion) co_return co_await RespondError(error);
      if (completion->stream()) co_return co_await Stream(*completion, behavior);
      completion->AppendJson(body_);
      break;
    case Endpoint::kResponses: {
      std::optional<ResponseReply> reply =
          ResponseReply::Plan(body, behavior, response_key, server_.responses(),
                              static_cast<int64_t>(std::time(nullptr)), &error);
      if (!reply) co_return co_await RespondError(error);
      if (reply->stream()) co_return co_await Stream(*reply, behavior);
      reply->AppendJson(body_);
      break;
    }
    case Endpoint::kResponseStored: {
      if (method_name == "GET" && response_action.empty() && HasQueryFlag(query_copy, "stream")) {
        int32_t status = 0;
        std::string answer;
        std::optional<ResponseReply> replay = ResponseReplay(response_key, response_id, query_copy,
                                                             server_.responses(), &status, &answer);
        if (!replay) co_return co_await Respond(status, answer);
        co_return co_await Stream(*replay, behavior);
      }
      auto [status, answer] = ResponseFollowUp(method_name, response_key, response_id,
                                               response_action, query_copy, server_.responses());
      co_return co_await Respond(status, answer);
    }
    case Endpoint::kMessages: {
      std::optional<AnthropicMessage> message =
          AnthropicMessage::Plan(body, behavior, seq_, &state, &error);
      if (!message) co_return co_await RespondError(error);
      if (message->stream()) co_return co_await Stream(*message, behavior);
      message->AppendJson(body_);
      break;
    }
    case Endpoint::kCountTokens: {
      const std::optional<int32_t> tokens = AnthropicMessage::CountTokens(body, &error);
      if (!tokens) co_return co_await RespondError(error);
      body_ = "{\"input_tokens\":" + std::to_string(*tokens) + "}";
      break;
    }
    case Endpoint::kFiles: {
      std::string purpose;
      bool ascending = false;
      size_t limit = 10000;
      for (size_t pos = 0; pos < query.size();) {
        size_t amp = query.find('&', pos);
        std::string_view param = query.substr(pos, amp - pos);
        if (param.starts_with("purpose=")) purpose = PercentDecode(param.substr(8));
        if (param == "order=asc") ascending = true;
        if (param.starts_with("limit="))
          std::from_chars(param.data() + 6, param.data() + param.size(), limit);
        pos = amp == std::string_view::npos ? query.size() : amp + 1;
      }
      body_ = server_.files().ListJson(purpose, ascending, std::max<size_t>(1, limit));
      break;
    }
    case Endpoint::kFile:
    case Endpoint::kDeleteFile:
    case Endpoint::kFileContent: {
      const std::string id(route.object_id);
      std::optional<StoredFile> file = server_.files().Get(id);
      if (!file) {
        error = ErrorForStatus(404, std::nullopt);
        error.message = "No such File object: " + id;
        error.param = "id";
        co_return co_await RespondError(error);
      }
      if (route.endpoint == Endpoint::kFileContent) {
        body_ = std::move(file->content);
        co_return co_await Respond(200, body_, kNoHeaders, kOctetStream);
      }
      if (route.endpoint == Endpoint::kDeleteFile) {
        server_.files().Delete(id);
        Json deleted = {{"id", id}, {"object", "file"}, {"deleted", true}};
        body_ = deleted.dump();
      } else {
        body_ = FileJson(*file).dump();
      }
      break;
    }
    case Endpoint::kBatches: {
      std::optional<std::string> batch = server_.files().CreateBatch(body, &error);
      if (!batch) co_return co_await RespondError(error);
      body_ = std::move(*batch);
      break;
    }
    case Endpoint::kBatch: {
      const std::string id(route.object_id);
      std::optional<std::string> batch = server_.files().GetBatch(id);
      if (!batch) {
        error = ErrorForStatus(404, std::nullopt);
        error.message = "No batch found with id '" + id + "'.";
        co_return co_await RespondError(error);
      }
      body_ = std::move(*batch);
      break;
    }
    case Endpoint::kImagesGenerations:
    case Endpoint::kImagesEdits:
    case Endpoint::kImagesVariations:
    case Endpoint::kSpeech:
    case Endpoint::kTranscriptions:
    case Endpoint::kTranslations:
    case Endpoint::kModerations: {
      media::Reply reply;
      const int64_t now = static_cast<int64_t>(std::time(nullptr));
      if (route.endpoint == Endpoint::kSpeech) {
        reply = media::Speech(body);
      } else if (route.endpoint == Endpoint::kModerations) {
        reply = media::Moderate(body, seq_);
      } else if (route.endpoint == Endpoint::kTranscriptions ||
                 route.endpoint == Endpoint::kTranslations) {
        reply = media::Transcribe(*form, route.endpoint == Endpoint::kTranslations);
      } else {
        reply = media::Images(body, form ? form->images : 0,
                              route.endpoint == Endpoint::kImagesEdits, now);
      }
      if (reply.error) co_return co_await RespondError(*reply.error);
      if (!reply.pieces.empty()) {
        media::PieceStream pieces(std::move(reply.pieces));
        co_return co_await Stream(pieces, behavior, reply.content_type);
      }
      co_return co_await Respond(200, reply.body, {}, reply.content_type);
    }
    case Endpoint::kNone:
      break;
  }
  if (behavior.reset_after_chunks) {  // a non-streamed reply: drop the connection, answer nothing
    ResetConnection();
    co_return false;
  }
  co_return co_await Respond(200, body_);
}

awaitable<bool> Session::HandleUpload(http::request_parser<http::string_body>& head_parser) {
  MockState& state = server_.state();
  keep_alive_ = head_parser.get().keep_alive();
  http10_ = head_parser.get().version() == 10;
  seq_ = server_.NextSeq();
  status_ = 0;
  anthropic_ = false;
  const std::string key(BearerToken(head_parser.get()[http::field::authorization]));
  const std::optional<Behavior> key_behavior = state.Admit(key, "/v1/files");
  InFlight in_flight{state};
  Behavior behavior = server_.options().defaults;
  if (key_behavior) behavior.Overlay(*key_behavior);
  std::optional<ApiError> early;
  const std::string boundary = MultipartBoundary(head_parser.get()[http::field::content_type]);
  if (key.empty()) {
    early = ErrorForStatus(401, std::nullopt);
    early->message = "You didn't provide an API key.";
  } else if (!server_.KeyAllowed(key)) {
    early = ErrorForStatus(401, std::nullopt);
    early->message = "Incorrect API key provided: " + Redact(key) + ".";
  } else if (behavior.status.value_or(0) >= 400) {
    early = ErrorForStatus(*behavior.status, behavior.error_code);
  } else if (boundary.empty()) {
    early.emplace();
    early->message = "Invalid Content-Type header (" +
                     std::string(head_parser.get()[http::field::content_type]) +
                     "), expected multipart/form-data.";
  }
  if (early) {
    // The body is not read: the connection cannot carry another request.
    keep_alive_ = false;
    Request head(head_parser.get().base());
    server_.Record(std::move(head));
    co_return co_await RespondError(*early);
  }

  // From here the body is read in pieces into one fixed buffer and scanned.
  http::request_parser<http::buffer_body> parser(std::move(head_parser));
  parser.body_limit(kUploadLimit);
  MultipartScanner scanner(boundary);
  std::vector<char> chunk(kUploadReadBytes);
  uint64_t total = 0;
  beast::error_code ec;
  while (!parser.is_done()) {
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    co_await http::async_read_some(socket_, buffer_, parser,
                                   asio::redirect_error(use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    const size_t n = chunk.size() - parser.get().body().size;
    total += n;
    scanner.Feed(std::string_view(chunk.data(), n));
    if (ec) {
      state.CountCancelled();
      co_return false;  // the client left mid-upload (or sent garbage): nothing is stored
    }
  }
  Request head(parser.get().base());
  head.body() = "<multipart upload: " + std::to_string(total) + " bytes>";
  server_.Record(std::move(head));
  ApiError error;
  if (!scanner.finished()) {
    error.message = scanner.error().empty() ? "The multipart body is incomplete." : scanner.error();
    co_return co_await RespondError(error);
  }
  if (!scanner.saw_file()) {
    error.message = "Missing required parameter: 'file'.";
    error.param = "file";
    co_return co_await RespondError(error);
  }
  if (!ValidFilePurpose(scanner.purpose())) {
    error.message = scanner.purpose().empty()
                        ? "Missing required parameter: 'purpose'."
                        : "'" + scanner.purpose() + "' is not one of the supported purposes.";
    error.param = "purpose";
    co_return co_await RespondError(error);
  }
  StoredFile file;
  file.filename = scanner.filename();
  file.purpose = scanner.purpose();
  file.bytes = scanner.file_bytes();
  file.content = std::move(scanner.file_head());
  body_ = server_.files().Add(std::move(file));
  co_return co_await Respond(200, body_);
}

awaitable<bool> Session::HandleControl(Request& req, std::string_view path,
                                       std::string_view query) {
  MockState& state = server_.state();
  const http::verb method = req.method();
  constexpr std::string_view kKeys = "/_mock/keys/";
  if (method == http::verb::get && path == "/_mock/stats") {
    co_return co_await Respond(200, state.StatsJson().dump());
  }
  if (method == http::verb::get && path == "/_mock/health") {
    co_return co_await Respond(200, kHealthy);
  }
  if (method == http::verb::post && path == "/_mock/reset") {
    state.Reset();
    server_.ClearRecent();
    co_return co_await Respond(200, kOk);
  }
  if (method == http::verb::get && path == "/_mock/keys") {
    co_return co_await Respond(200, state.KeyBehaviorsJson().dump());
  }
  if (method == http::verb::get && (path == "/_mock/requests" || path == "/_mock/last")) {
    size_t limit = path == "/_mock/last" ? 1 : kRecentRequests;
    if (query.starts_with("limit=")) {
      std::from_chars(query.data() + 6, query.data() + query.size(), limit);
    }
    Json recent = server_.RecentJson(limit);
    // A multipart body (audio, images) is binary: invalid UTF-8 is replaced, never thrown on.
    constexpr auto kReplace = Json::error_handler_t::replace;
    if (path == "/_mock/requests")
      co_return co_await Respond(200, recent.dump(-1, ' ', false, kReplace));
    if (recent.empty()) co_return co_await Respond(404, kNoRequest);
    co_return co_await Respond(200, recent.back().dump(-1, ' ', false, kReplace));
  }
  if (path.starts_with(kKeys) && path.size() > kKeys.size() &&
      (method == http::verb::post || method == http::verb::put || method == http::verb::delete_)) {
    const std::string key = PercentDecode(path.substr(kKeys.size()));
    std::string error;
    std::optional<Behavior> behavior = Behavior{};
    if (method != http::verb::delete_ && !req.body().empty()) {
      Json body = Json::parse(req.body(), nullptr, false);
      behavior = body.is_discarded() ? std::nullopt : BehaviorFromJson(body, &error);
      if (body.is_discarded()) error = "malformed JSON";
    }
    // Built outside the co_await: g++ 12 miscompiles braced temporaries inside one.
    Json reply = Json::object();
    if (!behavior) {
      reply["error"] = error;
      co_return co_await Respond(400, reply.dump());
    }
    state.SetKeyBehavior(key, *behavior);
    reply["key"] = key;
    reply["behavior"] = BehaviorToJson(*behavior);
    co_return co_await Respond(200, reply.dump());
  }
  co_return co_await Respond(404, kUnknownControl);
}

void Session::AppendCommonHeaders(std::string& head) {
  head += "x-request-id: req_mock";
  AppendNumber(head, seq_, 16);
  head += "\r\n";
  if (anthropic_) {  // the Messages API's name for it
    head += "request-id: ";
    AppendRequestId(head);
    head += "\r\n";
  }
  if (!keep_alive_) {
    head += "connection: close\r\n";
  } else if (http10_) {
    head += "connection: keep-alive\r\n";
  }
}

awaitable<bool> Session::Respond(int32_t status, std::string_view body,
                                 std::string_view extra_headers, std::string_view content_type) {
  status_ = status;
  head_.clear();
  head_ += http10_ ? "HTTP/1.0 " : "HTTP/1.1 ";
  AppendNumber(head_, static_cast<uint64_t>(status));
  head_ += ' ';
  head_ += http::obsolete_reason(static_cast<http::status>(status));
  head_ += "\r\ncontent-type: ";
  head_ += content_type;
  head_ += "\r\ncontent-length: ";
  AppendNumber(head_, body.size());
  head_ += "\r\n";
  head_ += extra_headers;
  AppendCommonHeaders(head_);
  head_ += "\r\n";
  const std::array<asio::const_buffer, 2> buffers{asio::buffer(head_),
                                                  asio::buffer(body.data(), body.size())};
  beast::error_code ec;
  co_await asio::async_write(socket_, buffers, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    client_gone_ = true;
    if (in_api_) server_.state().CountCancelled();
    co_return false;
  }
  co_return keep_alive_;
}

awaitable<bool> Session::RespondError(const ApiError& error, std::string_view extra_headers) {
  std::string body;
  if (anthropic_) {
    std::string request_id;
    AppendRequestId(request_id);
    AppendAnthropicErrorJson(body, error, request_id);
  } else {
    AppendErrorJson(body, error);
  }
  co_return co_await Respond(error.status, body, extra_headers);
}

awaitable<bool> Session::Stream(EventStream& completion, const Behavior& behavior,
                                std::string_view content_type) {
  const int32_t delay = behavior.chunk_delay_ms.value_or(0);
  const int64_t reset_after = behavior.reset_after_chunks.value_or(-1);
  const bool chunked = !http10_;  // an HTTP/1.0 client gets the events and a close instead
  if (!chunked) keep_alive_ = false;
  status_ = 200;
  head_.clear();
  head_ += http10_ ? "HTTP/1.0 200 OK\r\n" : "HTTP/1.1 200 OK\r\n";
  head_ += "content-type: ";
  head_ += content_type;
  head_ += "\r\ncache-control: no-cache\r\n";
  if (chunked) head_ += "transfer-encoding: chunked\r\n";
  AppendCommonHeaders(head_);
  head_ += "\r\n";

  beast::error_code ec;
  bool head_pending = true;  // the head goes out with the first event unless a delay comes first
  auto write_head = [&]() -> awaitable<bool> {
    head_pending = false;
    co_await asio::async_write(socket_, asio::buffer(head_),
                               asio::redirect_error(use_awaitable, ec));
    co_return !ec;
  };
  for (int64_t sent = 0;; ++sent) {
    if (sent == reset_after) {
      if (head_pending) co_await write_head();
      ResetConnection();
      co_return false;
    }
    body_.clear();
    bool content = false;
    if (!completion.NextEvent(body_, &content)) break;
    if (content && delay > 0) {
      if (head_pending && !co_await write_head()) break;
      if (!co_await PauseWhileConnected(delay)) break;
    }
    const bool last = completion.finished();
    char size_line[24];
    size_t size_len = 0;
    if (chunked) {
      auto [end, err] = std::to_chars(size_line, size_line + 20, body_.size(), 16);
      *end++ = '\r';
      *end++ = '\n';
      size_len = static_cast<size_t>(end - size_line);
    }
    const std::string_view tail = !chunked ? "" : last ? "\r\n0\r\n\r\n" : "\r\n";
    const std::array<asio::const_buffer, 4> buffers{
        head_pending ? asio::buffer(head_) : asio::const_buffer(),
        asio::buffer(size_line, size_len), asio::buffer(body_),
        asio::buffer(tail.data(), tail.size())};
    head_pending = false;
    co_await asio::async_write(socket_, buffers, asio::redirect_error(use_awaitable, ec));
    if (ec) break;
    if (last) co_return keep_alive_;
  }
  // The client went away mid-stream (a write failed or it hung up during a delay).
  client_gone_ = true;
  server_.state().CountCancelled();
  co_return false;
}

awaitable<bool> Session::PauseWhileConnected(int32_t ms) {
  if (client_gone_) co_return false;
  timer_.expires_after(std::chrono::milliseconds(ms));
  WatchPeer();
  beast::error_code ec;
  co_await timer_.async_wait(asio::redirect_error(use_awaitable, ec));
  if (!client_gone_) socket_.cancel(ec);  // stops the watch
  co_return !client_gone_;
}

// Notices a disconnect while we are waiting, without consuming request bytes: waits for the
// socket to become readable and peeks. Runs on the session's strand, like the coroutine.
void Session::WatchPeer() {
  socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      // Never block here: readiness can be spurious, and a blocking peek would stall the
      // whole connection until the client left.
      char probe;
      ssize_t n = ::recv(self->socket_.native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0) return;  // a pipelined request, not a hang-up
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        self->WatchPeer();
        return;
      }
    }
    self->client_gone_ = true;
    self->timer_.cancel();
  });
}

awaitable<void> Session::HoldUntilClientLeaves() {
  std::array<char, 512> scratch;
  beast::error_code ec;
  while (!ec) {
    co_await socket_.async_read_some(asio::buffer(scratch),
                                     asio::redirect_error(use_awaitable, ec));
  }
  client_gone_ = true;
}

void Session::ResetConnection() {
  beast::error_code ec;
  socket_.set_option(asio::socket_base::linger(true, 0), ec);  // close() then sends RST
  socket_.close(ec);
}

// ---------------------------------------------------------------------------------------------

awaitable<void> Server::Accept(tcp::acceptor& acceptor) {
  for (;;) {
    tcp::socket socket(asio::make_strand(ioc_));
    beast::error_code ec;
    co_await acceptor.async_accept(socket, asio::redirect_error(use_awaitable, ec));
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) {  // e.g. out of file descriptors: back off instead of spinning
      std::fprintf(stderr, "mock-upstream: accept: %s\n", ec.message().c_str());
      asio::steady_timer pause(ioc_, std::chrono::milliseconds(50));
      co_await pause.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    auto session = std::make_shared<Session>(std::move(socket), *this);
    auto executor = session->executor();
    asio::co_spawn(executor, Session::Run(std::move(session)), asio::detached);
  }
}

int Server::Run() {
  beast::error_code ec;
  const auto address = asio::ip::make_address(options_.host, ec);
  if (ec) {
    std::fprintf(stderr, "mock-upstream: bad listen address '%s'\n", options_.host.c_str());
    return 2;
  }
  tcp::acceptor acceptor(ioc_);
  const tcp::endpoint endpoint(address, options_.port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::fprintf(stderr, "mock-upstream: cannot listen on %s:%u: %s\n", options_.host.c_str(),
                 options_.port, ec.message().c_str());
    return 1;
  }
  const uint16_t port = acceptor.local_endpoint().port();
  if (!options_.port_file.empty()) {
    // Written to a temporary name and renamed, so a reader never sees a partial number.
    const std::string tmp = options_.port_file + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << port << '\n';
    }
    if (std::rename(tmp.c_str(), options_.port_file.c_str()) != 0) {
      std::fprintf(stderr, "mock-upstream: cannot write %s: %s\n", options_.port_file.c_str(),
                   std::strerror(errno));
      return 1;
    }
  }
  const bool v6 = address.is_v6();
  std::printf("listening on %s%s%s:%u\n", v6 ? "[" : "", options_.host.c_str(), v6 ? "]" : "",
              port);
  std::fflush(stdout);

  asio::signal_set signals(ioc_, SIGINT, SIGTERM);
  signals.async_wait([this](const beast::error_code&, int) { ioc_.stop(); });
  asio::co_spawn(ioc_, Accept(acceptor), asio::detached);

  std::vector<std::thread> threads;
  for (int32_t i = 1; i < options_.threads; ++i) threads.emplace_back([this] { ioc_.run(); });
  ioc_.run();
  for (auto& thread : threads) thread.join();
  return 0;
}

}  // namespace

int RunServer(const Options& options) {
  Server server(options);
  return server.Run();
}

}  // namespace tollgate::mock
