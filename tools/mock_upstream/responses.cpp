// The Responses API (POST /v1/responses and the calls on a stored response), as OpenAI documents
// it: the response object, the typed stream events with sequence numbers and no [DONE], storage
// per API key.
#include <nlohmann/json.hpp>

#include <algorithm>

#include "mock_upstream.h"

namespace tollgate::mock {
namespace {

using Json = nlohmann::ordered_json;

ApiError Invalid(std::string message, std::optional<std::string> param,
                 std::optional<std::string> code = std::nullopt, int32_t status = 400) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::string ErrorBody(const ApiError& error) {
  std::string out;
  AppendErrorJson(out, error);
  return out;
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string StoreKey(std::string_view key, std::string_view id) {
  std::string k(key);
  k += '\n';
  k.append(id);
  return k;
}

// The input as items (what input_items lists): a string is one user message.
Json InputItems(const Json& input, ResponsesStore& store) {
  Json items = Json::array();
  auto message = [&](const std::string& role, const Json& content) {
    Json parts = Json::array();
    if (content.is_string()) {
      parts.push_back(
          {{"type", role == "assistant" ? "output_text" : "input_text"}, {"text", content}});
    } else if (content.is_array()) {
      parts = content;
    }
    return Json{{"id", store.NewId("msg_")},
                {"type", "message"},
                {"role", role},
                {"status", "completed"},
                {"content", parts}};
  };
  if (input.is_string()) {
    items.push_back(message("user", input));
  } else if (input.is_array()) {
    for (const auto& item : input) {
      if (!item.is_object()) continue;
      std::string type = item.value("type", item.contains("role") ? "message" : "");
      if (type == "message") {
        items.push_back(message(item.value("role", "user"), item.value("content", Json())));
      } else {
        Json copy = item;
        if (!copy.contains("id"))
          copy["id"] = store.NewId(type == "function_call" ? "fc_" : "fco_");
        items.push_back(std::move(copy));
      }
    }
  }
  return items;
}

// The function tool to call, or nullptr for a text reply (the chat mock's rule).
const Json* ToolToCall(const Json& body, const Json& items) {
  auto tools = body.find("tools");
  if (tools == body.end() || !tools->is_array() || items.empty()) return nullptr;
  const Json& last = items.back();
  if (last.value("type", "") != "message" || last.value("role", "") != "user") return nullptr;
  std::string wanted;
  if (auto choice = body.find("tool_choice"); choice != body.end()) {
    if (choice->is_string() && *choice == "none") return nullptr;
    if (choice->is_object()) wanted = choice->value("name", "");
  }
  for (const auto& tool : *tools) {
    if (!tool.is_object() || tool.value("type", "") != "function" || !tool.contains("name") ||
        !tool["name"].is_string())
      continue;
    if (wanted.empty() || tool["name"] == wanted) return &tool;
  }
  return nullptr;
}

size_t TextChars(const Json& items) {
  size_t n = 0;
  for (const auto& item : items) n += item.dump().size();
  return n;
}

// The tools as a response lists them: function tools with their defaults filled in.
Json EchoTools(const Json& body) {
  Json tools = body.value("tools", Json::array());
  if (!tools.is_array()) return Json::array();
  for (auto& tool : tools) {
    if (!tool.is_object() || tool.value("type", "") != "function") continue;
    if (!tool.contains("strict")) tool["strict"] = true;
    if (!tool.contains("description")) tool["description"] = nullptr;
    if (!tool.contains("parameters")) tool["parameters"] = nullptr;
  }
  return tools;
}

Json Event(const char* type, int64_t& seq, Json fields) {
  Json e{{"type", type}};
  for (auto& [k, v] : fields.items()) e[k] = v;
  e["sequence_number"] = seq++;
  return e;
}

std::string Frame(const Json& event) {
  return "event: " + event["type"].get<std::string>() + "\ndata: " + Dump(event) + "\n\n";
}

}  // namespace

std::string ResponsesStore::NewId(std::string_view prefix) {
  std::string id(prefix);
  const uint64_t n = next_.fetch_add(1, std::memory_order_relaxed) + 1;
  gen::AppendHex(id, gen::Fnv1a(std::to_string(n), 0x9e3779b97f4a7c15ull), 16);
  gen::AppendHex(id, n, 16);
  return id;
}

void ResponsesStore::Put(std::string_view key, const std::string& id, std::string response_json,
                         std::string input_items_json) {
  std::lock_guard lock(mu_);
  by_key_id_[StoreKey(key, id)] = {std::move(response_json), std::move(input_items_json)};
}

void ResponsesStore::PutBackground(std::string_view key, const std::string& id,
                                   std::string queued_json, std::string running_json,
                                   std::string final_json, Events events,
                                   std::string input_items_json, Clock::time_point ready_at) {
  Stored stored{std::move(queued_json), std::move(input_items_json)};
  stored.background = true;
  stored.running = std::move(running_json);
  stored.final_response = std::move(final_json);
  stored.events = std::move(events);
  stored.ready_at = ready_at;
  std::lock_guard lock(mu_);
  by_key_id_[StoreKey(key, id)] = std::move(stored);
}

void ResponsesStore::Advance(Stored& stored) {
  if (!stored.background || stored.final_response.empty()) return;
  if (Clock::now() >= stored.ready_at) {
    stored.response = std::move(stored.final_response);
    stored.final_response.clear();
  } else if (!stored.running.empty()) {
    stored.response = std::move(stored.running);
    stored.running.clear();
  }
}

std::optional<std::string> ResponsesStore::Get(std::string_view key, std::string_view id) {
  std::lock_guard lock(mu_);
  auto it = by_key_id_.find(StoreKey(key, id));
  if (it == by_key_id_.end()) return std::nullopt;
  Advance(it->second);
  return it->second.response;
}

std::optional<ResponsesStore::Events> ResponsesStore::StreamEvents(std::string_view key,
                                                                   std::string_view id,
                                                                   int64_t starting_after) {
  std::lock_guard lock(mu_);
  auto it = by_key_id_.find(StoreKey(key, id));
  if (it == by_key_id_.end() || !it->second.background) return std::nullopt;
  Stored& stored = it->second;
  const bool cancelled = stored.final_response.empty() &&
                         stored.response.find("\"status\":\"cancelled\"") != std::string::npos;
  if (!stored.final_response.empty()) {  // streaming it runs it to its end
    stored.response = std::move(stored.final_response);
    stored.final_response.clear();
  }
  Events out;
  // Events are numbered from 0 in order, so the n-th is sequence number n.
  for (size_t n = 0; n < stored.events.size(); ++n) {
    if (static_cast<int64_t>(n) <= starting_after) continue;
    if (cancelled && n >= 2) break;  // it never got past response.in_progress
    out.push_back(stored.events[n]);
  }
  return out;
}

std::optional<std::string> ResponsesStore::InputItems(std::string_view key,
                                                      std::string_view id) const {
  std::lock_guard lock(mu_);
  auto it = by_key_id_.find(StoreKey(key, id));
  if (it == by_key_id_.end()) return std::nullopt;
  return it->second.input_items;
}

bool ResponsesStore::Delete(std::string_view key, std::string_view id) {
  std::lock_guard lock(mu_);
  return by_key_id_.erase(StoreKey(key, id)) > 0;
}

void ResponsesStore::Update(std::string_view key, std::string_view id, std::string response_json) {
  std::lock_guard lock(mu_);
  auto it = by_key_id_.find(StoreKey(key, id));
  if (it == by_key_id_.end()) return;
  it->second.response = std::move(response_json);
  it->second.final_response.clear();  // cancelled: it never finishes
  it->second.running.clear();
}

std::optional<ResponseReply> ResponseReply::Plan(const nlohmann::json& request,
                                                 const Behavior& behavior, std::string_view key,
                                                 ResponsesStore& store, int64_t created,
                                                 ApiError* error) {
  const Json body = Json::parse(request.dump());
  if (!body.contains("model") || !body["model"].is_string()) {
    *error = Invalid("Missing required parameter: 'model'.", "model");
    return std::nullopt;
  }
  ResponseReply r;
  if (auto s = body.find("stream"); s != body.end() && !s->is_null()) {
    if (!s->is_boolean()) {
      *error = Invalid("Invalid type for 'stream': expected a boolean.", "stream");
      return std::nullopt;
    }
    r.stream_ = s->get<bool>();
  }
  int64_t max_output = INT32_MAX;
  if (auto m = body.find("max_output_tokens"); m != body.end() && !m->is_null()) {
    if (!m->is_number_integer() || m->get<int64_t>() < 16) {
      *error = Invalid(
          "Invalid 'max_output_tokens': integer below minimum value. Expected a "
          "value >= 16.",
          "max_output_tokens", "integer_below_min_value");
      return std::nullopt;
    }
    max_output = m->get<int64_t>();
  }
  // The conversation so far: the previous response's input and output, then this input.
  Json previous_items = Json::array();
  int64_t previous_tokens = 0;
  Json previous_id = nullptr;
  if (auto p = body.find("previous_response_id"); p != body.end() && !p->is_null()) {
    std::optional<std::string> stored =
        p->is_string() ? store.Get(key, p->get<std::string>()) : std::nullopt;
    if (!stored) {
      *error = Invalid("Previous response with id '" +
                           (p->is_string() ? p->get<std::string>() : "") + "' not found.",
                       "previous_response_id", "previous_response_not_found", 404);
      return std::nullopt;
    }
    Json prev = Json::parse(*stored);
    previous_items = Json::parse(*store.InputItems(key, p->get<std::string>()));
    for (const auto& item : prev["output"]) previous_items.push_back(item);
    if (prev["usage"].is_object())
      previous_tokens =
          prev["usage"].value("input_tokens", 0) + prev["usage"].value("output_tokens", 0);
    previous_id = *p;
  }
  const Json input = body.value("input", Json());
  if (input.is_null() && previous_id.is_null()) {
    *error = Invalid("Missing required parameter: 'input'.", "input");
    return std::nullopt;
  }
  Json items = InputItems(input, store);
  const std::string id = store.NewId("resp_");
  const std::string model = body["model"];
  const bool background = body.value("background", false);
  const bool store_it = body.value("store", true);

  // What is said: a tool call, what a tool returned, or words.
  const Json* tool = ToolToCall(body, items);
  std::string text;
  std::vector<uint32_t> cuts;
  int32_t words = std::clamp(behavior.size.value_or(behavior.chunks.value_or(10)), 0, 1 << 20);
  int32_t chunks = std::max(1, behavior.chunks.value_or(words));
  bool incomplete = false;
  if (!items.empty() && items.back().value("type", "") == "function_call_output") {
    text = "The tool returned: " + items.back().value("output", std::string());
    gen::CutText(text, chunks, &cuts);
  } else if (tool == nullptr) {
    if (words > max_output) {
      words = static_cast<int32_t>(max_output);
      incomplete = true;
    }
    gen::FillWords(gen::Fnv1a(Dump(items)), words, std::min(chunks, std::max(1, words)), &text,
                   &cuts);
  } else {
    text = gen::ArgumentsForSchema(nlohmann::json::parse(tool->value("parameters", Json()).dump()));
    gen::CutText(text, std::min<int32_t>(chunks, 4), &cuts);
  }
  const int32_t input_tokens =
      static_cast<int32_t>(previous_tokens) + gen::TokensForChars(TextChars(items)) +
      gen::TokensForChars(body.value("instructions", Json("")).dump().size());
  const int32_t reasoning = body.contains("reasoning") && body["reasoning"].is_object() ? 8 : 0;
  const int32_t output_tokens =
      reasoning + (tool ? std::max(1, gen::TokensForChars(text.size())) : gen::CountWords(text));

  Json item;
  if (tool != nullptr) {
    item = {{"id", store.NewId("fc_")},        {"type", "function_call"},
            {"status", "completed"},           {"arguments", text},
            {"call_id", store.NewId("call_")}, {"name", (*tool)["name"]}};
  } else {
    item = {{"id", store.NewId("msg_")},
            {"type", "message"},
            {"status", incomplete ? "incomplete" : "completed"},
            {"role", "assistant"},
            {"content", Json::array({{{"type", "output_text"},
                                      {"text", text},
                                      {"annotations", Json::array()},
                                      {"logprobs", Json::array()}}})}};
  }
  const char* final_status = incomplete ? "incomplete" : "completed";
  Json response{
      {"id", id},
      {"object", "response"},
      {"created_at", created},
      {"status", final_status},
      {"background", background},
      {"error", nullptr},
      {"incomplete_details", incomplete ? Json{{"reason", "max_output_tokens"}} : Json(nullptr)},
      {"instructions", body.value("instructions", Json())},
      {"max_output_tokens", body.value("max_output_tokens", Json())},
      {"model", model},
      {"output", Json::array({item})},
      {"parallel_tool_calls", body.value("parallel_tool_calls", true)},
      {"previous_response_id", previous_id},
      {"reasoning", body.value("reasoning", Json())},
      {"service_tier", "default"},
      {"store", store_it},
      {"temperature", body.value("temperature", 1.0)},
      {"text", {{"format", {{"type", "text"}}}}},
      {"tool_choice", body.value("tool_choice", Json("auto"))},
      {"tools", EchoTools(body)},
      {"top_p", body.value("top_p", 1.0)},
      {"truncation", "disabled"},
      {"usage",
       {{"input_tokens", input_tokens},
        {"input_tokens_details",
         {{"cached_tokens", static_cast<int32_t>(previous_tokens)}, {"cache_write_tokens", 0}}},
        {"output_tokens", output_tokens},
        {"output_tokens_details", {{"reasoning_tokens", reasoning}}},
        {"total_tokens", input_tokens + output_tokens}}},
      {"metadata", body.value("metadata", Json::object())}};
  if (body.contains("user") && body["user"].is_string()) response["user"] = body["user"];
  if (!incomplete) response["completed_at"] = created;
  // A background response is answered queued, before it runs; it runs for as long as its stream
  // would take (chunks x the chunk delay), then is what `response` says (ResponsesStore).
  Json queued = response;
  queued["status"] = "queued";
  queued["output"] = Json::array();
  queued.erase("usage");  // not yet known (the spec's usage is never null)
  queued.erase("completed_at");
  queued["incomplete_details"] = nullptr;
  Json running = queued;
  running["status"] = "in_progress";
  const auto store_items = [&] {
    Json all_items = previous_items;
    for (const auto& i : items) all_items.push_back(i);
    return Dump(all_items);
  };
  if (!background) {
    if (store_it) store.Put(key, id, Dump(response), store_items());
    r.json_ = Dump(response);
    if (!r.stream_) return r;
  } else {
    r.json_ = Dump(queued);
  }

  int64_t seq = 0;
  auto add = [&r](const Json& event, bool content = false) {
    r.events_.emplace_back(Frame(event), content);
  };
  add(Event("response.created", seq, {{"response", background ? queued : running}}));
  add(Event("response.in_progress", seq, {{"response", running}}));
  Json open = item;
  open["status"] = "in_progress";
  const std::string item_id = item["id"];
  if (tool != nullptr) {
    open["arguments"] = "";
    add(Event("response.output_item.added", seq, {{"output_index", 0}, {"item", open}}));
    uint32_t from = 0;
    for (uint32_t cut : cuts) {
      add(Event("response.function_call_arguments.delta", seq,
                {{"item_id", item_id},
                 {"output_index", 0},
                 {"delta", text.substr(from, cut - from)}}),
          true);
      from = cut;
    }
    add(Event(
        "response.function_call_arguments.done", seq,
        {{"item_id", item_id}, {"name", item["name"]}, {"output_index", 0}, {"arguments", text}}));
  } else {
    open["content"] = Json::array();
    add(Event("response.output_item.added", seq, {{"output_index", 0}, {"item", open}}));
    Json part = item["content"][0];
    Json empty_part = part;
    empty_part["text"] = "";
    Json where{{"item_id", item_id}, {"output_index", 0}, {"content_index", 0}};
    Json added = where;
    added["part"] = empty_part;
    add(Event("response.content_part.added", seq, added));
    uint32_t from = 0;
    for (uint32_t cut : cuts) {
      Json delta = where;
      delta["delta"] = text.substr(from, cut - from);
      delta["logprobs"] = Json::array();
      add(Event("response.output_text.delta", seq, delta), true);
      from = cut;
    }
    Json done = where;
    done["text"] = text;
    done["logprobs"] = Json::array();
    add(Event("response.output_text.done", seq, done));
    Json part_done = where;
    part_done["part"] = part;
    add(Event("response.content_part.done", seq, part_done));
  }
  add(Event("response.output_item.done", seq, {{"output_index", 0}, {"item", item}}));
  add(Event(incomplete ? "response.incomplete" : "response.completed", seq,
            {{"response", response}}));
  if (background && store_it) {
    // A streamed create runs it as it streams; otherwise it takes the time its stream would.
    const int64_t run_ms = r.stream_
                               ? 0
                               : static_cast<int64_t>(std::max(1, chunks)) *
                                     std::max<int32_t>(0, behavior.chunk_delay_ms.value_or(0));
    store.PutBackground(key, id, Dump(queued), Dump(running), Dump(response), r.events_,
                        store_items(),
                        ResponsesStore::Clock::now() + std::chrono::milliseconds(run_ms));
  }
  if (!r.stream_) r.events_.clear();
  return r;
}

ResponseReply ResponseReply::Replay(ResponsesStore::Events events) {
  ResponseReply r;
  r.stream_ = true;
  r.events_ = std::move(events);
  return r;
}

std::optional<ResponseReply> ResponseReplay(std::string_view key, std::string_view id,
                                            std::string_view query, ResponsesStore& store,
                                            int32_t* status, std::string* error) {
  int64_t starting_after = -1;
  for (size_t pos = 0; pos < query.size();) {
    size_t amp = query.find('&', pos);
    std::string_view param = query.substr(pos, amp - pos);
    if (param.starts_with("starting_after=")) {
      const std::string value(param.substr(15));
      char* end = nullptr;
      starting_after = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0') {
        *status = 400;
        *error =
            ErrorBody(Invalid("Invalid 'starting_after': expected an integer.", "starting_after"));
        return std::nullopt;
      }
    }
    pos = amp == std::string_view::npos ? query.size() : amp + 1;
  }
  if (!store.Get(key, id)) {
    *status = 404;
    *error = ErrorBody(Invalid("Response with id '" + std::string(id) + "' not found.",
                               std::nullopt, std::nullopt, 404));
    return std::nullopt;
  }
  std::optional<ResponsesStore::Events> events = store.StreamEvents(key, id, starting_after);
  if (!events) {
    *status = 400;
    *error = ErrorBody(
        Invalid("This response cannot be streamed because it was not created with background=true.",
                "stream"));
    return std::nullopt;
  }
  return ResponseReply::Replay(std::move(*events));
}

bool ResponseReply::NextEvent(std::string& out, bool* content) {
  if (next_ >= events_.size()) return false;
  out += events_[next_].first;
  *content = events_[next_].second;
  ++next_;
  return true;
}

std::pair<int32_t, std::string> ResponseFollowUp(std::string_view method, std::string_view key,
                                                 std::string_view id, std::string_view action,
                                                 std::string_view query, ResponsesStore& store) {
  auto not_found = [&] {
    return std::make_pair(404,
                          ErrorBody(Invalid("Response with id '" + std::string(id) + "' not found.",
                                            std::nullopt, std::nullopt, 404)));
  };
  std::optional<std::string> stored = store.Get(key, id);
  if (!stored) return not_found();
  if (method == "DELETE" && action.empty()) {
    store.Delete(key, id);
    return {200, Dump(Json{{"id", id}, {"object", "response"}, {"deleted", true}})};
  }
  if (method == "GET" && action.empty()) return {200, *stored};
  if (method == "POST" && action == "cancel") {
    Json response = Json::parse(*stored);
    if (!response.value("background", false))
      return {400, ErrorBody(Invalid("Only responses created with background=true can be "
                                     "cancelled.",
                                     std::nullopt))};
    if (response["status"] == "in_progress" || response["status"] == "queued")
      response["status"] = "cancelled";
    store.Update(key, id, Dump(response));
    return {200, Dump(response)};
  }
  // input_items: newest first unless order=asc; limit 1..100 (default 20); after an item id.
  Json items = Json::parse(*store.InputItems(key, id));
  std::string order = "desc";
  int64_t limit = 20;
  std::string after;
  for (size_t pos = 0; pos < query.size();) {
    size_t amp = query.find('&', pos);
    std::string_view param = query.substr(pos, amp - pos);
    size_t eq = param.find('=');
    std::string_view name = param.substr(0, eq);
    std::string value(eq == std::string_view::npos ? "" : param.substr(eq + 1));
    if (name == "order") order = value;
    if (name == "after") after = value;
    if (name == "limit") limit = std::clamp<int64_t>(std::atoll(value.c_str()), 1, 100);
    pos = amp == std::string_view::npos ? query.size() : amp + 1;
  }
  if (order != "asc" && order != "desc")
    return {400,
            ErrorBody(Invalid("Invalid value for 'order': expected 'asc' or 'desc'.", "order"))};
  if (order == "desc") std::reverse(items.begin(), items.end());
  Json data = Json::array();
  bool skipping = !after.empty();
  bool more = false;
  for (const auto& item : items) {
    if (skipping) {
      skipping = item.value("id", "") != after;
      continue;
    }
    if (static_cast<int64_t>(data.size()) == limit) {
      more = true;
      break;
    }
    data.push_back(item);
  }
  Json list{{"object", "list"},
            {"data", data},
            {"first_id", data.empty() ? Json("") : data.front()["id"]},
            {"last_id", data.empty() ? Json("") : data.back()["id"]},
            {"has_more", more}};
  return {200, Dump(list)};
}

}  // namespace tollgate::mock
