// Golden tests of the OpenAI chat ↔ Anthropic Messages translation (src/anthropic.h): each case
// is an input and the expected output as JSON text, compared structurally (parsed, then equal as
// JSON values), so key order and spacing never matter.
#include "src/anthropic.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <variant>
#include <vector>

namespace tollgate::edge::anthropic {
namespace {

Json J(std::string_view text) { return Json::parse(text); }

Json MustTranslate(std::string_view openai, int64_t default_max_tokens = 4096) {
  auto result = ToMessagesRequest(J(openai), "claude-sonnet-4-5", default_max_tokens);
  if (auto* error = std::get_if<TranslationError>(&result)) {
    ADD_FAILURE() << "unexpected error: " << error->message;
    return {};
  }
  return std::get<Json>(std::move(result));
}

TranslationError MustRefuse(std::string_view openai) {
  auto result = ToMessagesRequest(J(openai), "claude-sonnet-4-5", 4096);
  if (!std::holds_alternative<TranslationError>(result)) {
    ADD_FAILURE() << "translated although untranslatable: " << openai;
    return {};
  }
  return std::get<TranslationError>(result);
}

// ---- Requests ----

TEST(AnthropicRequest, Text) {
  EXPECT_EQ(MustTranslate(R"({"model":"claude","messages":[{"role":"user","content":"Hello"}],
                              "max_tokens":100,"temperature":0.5,"top_p":0.9,"user":"u-42",
                              "stop":"END","stream":true,"stream_options":{"include_usage":true},
                              "presence_penalty":0.1,"seed":7})"),
            J(R"({"model":"claude-sonnet-4-5","max_tokens":100,"temperature":0.5,"top_p":0.9,
                  "metadata":{"user_id":"u-42"},"stop_sequences":["END"],"stream":true,
                  "messages":[{"role":"user","content":"Hello"}]})"));
}

TEST(AnthropicRequest, MaxTokensDefaultAndPrecedence) {
  EXPECT_EQ(MustTranslate(R"({"messages":[{"role":"user","content":"hi"}]})", 1234)["max_tokens"],
            1234);
  EXPECT_EQ(MustTranslate(R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":5,
                              "max_completion_tokens":9})")["max_tokens"],
            9);
  EXPECT_EQ(MustRefuse(R"({"messages":[],"max_tokens":0})").param, "max_tokens");
}

TEST(AnthropicRequest, StopArrayAndTemperatureClamped) {
  Json out = MustTranslate(R"({"messages":[{"role":"user","content":"hi"}],
                               "stop":["a","b"],"temperature":1.7})");
  EXPECT_EQ(out["stop_sequences"], J(R"(["a","b"])"));
  EXPECT_EQ(out["temperature"], 1.0);
  EXPECT_EQ(MustTranslate(R"({"messages":[],"temperature":0})")["temperature"], 0.0);
  EXPECT_FALSE(MustTranslate(R"({"messages":[],"stop":null})").contains("stop_sequences"));
}

TEST(AnthropicRequest, SystemAndDeveloper) {
  // One string: a string.
  EXPECT_EQ(MustTranslate(R"({"messages":[{"role":"system","content":"Be brief."},
                                           {"role":"user","content":"hi"}]})"),
            J(R"({"model":"claude-sonnet-4-5","max_tokens":4096,"system":"Be brief.",
                  "messages":[{"role":"user","content":"hi"}]})"));
  // Several (system, developer, parts, one in the middle): text blocks in order.
  EXPECT_EQ(MustTranslate(R"({"messages":[
                {"role":"system","content":"Be brief."},
                {"role":"developer","content":[{"type":"text","text":"Use French."},
                                               {"type":"text","text":"No emoji."}]},
                {"role":"user","content":"hi"},
                {"role":"system","content":"Late rule."}]})"),
            J(R"({"model":"claude-sonnet-4-5","max_tokens":4096,
                  "system":[{"type":"text","text":"Be brief."},{"type":"text","text":"Use French."},
                            {"type":"text","text":"No emoji."},{"type":"text","text":"Late rule."}],
                  "messages":[{"role":"user","content":"hi"}]})"));
}

TEST(AnthropicRequest, ConsecutiveSameRoleMessagesMerge) {
  EXPECT_EQ(MustTranslate(R"({"messages":[
                {"role":"user","content":"one"},
                {"role":"user","content":[{"type":"text","text":"two"}]},
                {"role":"assistant","content":"three"},
                {"role":"assistant","content":"four"},
                {"role":"user","content":"five"}]})"),
            J(R"({"model":"claude-sonnet-4-5","max_tokens":4096,"messages":[
                {"role":"user","content":[{"type":"text","text":"one"},{"type":"text","text":"two"}]},
                {"role":"assistant","content":[{"type":"text","text":"three"},
                                               {"type":"text","text":"four"}]},
                {"role":"user","content":"five"}]})"));
}

TEST(AnthropicRequest, Images) {
  EXPECT_EQ(
      MustTranslate(R"({"messages":[{"role":"user","content":[
                {"type":"text","text":"What is this?"},
                {"type":"image_url","image_url":{"url":"https://example.com/cat.png","detail":"high"}},
                {"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/4AAQ"}}]}]})"),
      J(R"({"model":"claude-sonnet-4-5","max_tokens":4096,"messages":[{"role":"user","content":[
                {"type":"text","text":"What is this?"},
                {"type":"image","source":{"type":"url","url":"https://example.com/cat.png"}},
                {"type":"image","source":{"type":"base64","media_type":"image/jpeg",
                                          "data":"/9j/4AAQ"}}]}]})"));
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"user","content":[
                {"type":"image_url","image_url":{"url":"data:image/png,rawbytes"}}]}]})")
                .param,
            "messages[0].content");
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"user","content":[
                {"type":"image_url","image_url":{"url":"data:image/bmp;base64,Qk0="}}]}]})")
                .param,
            "messages[0].content");
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"user","content":[
                {"type":"image_url","image_url":{"url":"ftp://example.com/a.png"}}]}]})")
                .param,
            "messages[0].content");
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"user","content":[
                {"type":"input_audio","input_audio":{"data":"AAA","format":"wav"}}]}]})")
                .param,
            "messages[0].content");
}

constexpr std::string_view kTools = R"([
  {"type":"function","function":{"name":"get_weather","description":"Weather for a city",
   "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
  {"type":"function","function":{"name":"now"}}])";

constexpr std::string_view kAnthropicTools = R"([
  {"name":"get_weather","description":"Weather for a city",
   "input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}},
  {"name":"now","input_schema":{"type":"object","properties":{}}}])";

Json WithTools(std::string_view extra) {
  return MustTranslate(std::string(R"({"messages":[{"role":"user","content":"hi"}],"tools":)") +
                       std::string(kTools) + std::string(extra) + "}");
}

TEST(AnthropicRequest, ToolsAndToolChoice) {
  Json plain = WithTools("");
  EXPECT_EQ(plain["tools"], J(kAnthropicTools));
  EXPECT_FALSE(plain.contains("tool_choice"));

  EXPECT_EQ(WithTools(R"(,"tool_choice":"auto")")["tool_choice"], J(R"({"type":"auto"})"));
  EXPECT_EQ(WithTools(R"(,"tool_choice":"none")")["tool_choice"], J(R"({"type":"none"})"));
  EXPECT_EQ(WithTools(R"(,"tool_choice":"required")")["tool_choice"], J(R"({"type":"any"})"));
  EXPECT_EQ(
      WithTools(R"(,"tool_choice":{"type":"function","function":{"name":"now"}})")["tool_choice"],
      J(R"({"type":"tool","name":"now"})"));

  // parallel_tool_calls: false → disable_parallel_tool_use on whichever choice applies.
  EXPECT_EQ(WithTools(R"(,"parallel_tool_calls":false)")["tool_choice"],
            J(R"({"type":"auto","disable_parallel_tool_use":true})"));
  EXPECT_EQ(WithTools(R"(,"parallel_tool_calls":false,"tool_choice":"required")")["tool_choice"],
            J(R"({"type":"any","disable_parallel_tool_use":true})"));
  EXPECT_EQ(WithTools(R"(,"parallel_tool_calls":false,
                         "tool_choice":{"type":"function","function":{"name":"now"}})")
                ["tool_choice"],
            J(R"({"type":"tool","name":"now","disable_parallel_tool_use":true})"));
  EXPECT_EQ(WithTools(R"(,"parallel_tool_calls":false,"tool_choice":"none")")["tool_choice"],
            J(R"({"type":"none"})"));
  EXPECT_FALSE(WithTools(R"(,"parallel_tool_calls":true)").contains("tool_choice"));

  // Without tools: auto/none dropped, required/named refused.
  EXPECT_FALSE(MustTranslate(R"({"messages":[],"tool_choice":"none"})").contains("tool_choice"));
  EXPECT_EQ(MustRefuse(R"({"messages":[],"tool_choice":"required"})").param, "tool_choice");
  EXPECT_EQ(MustRefuse(R"({"messages":[],"tools":[{"type":"code_interpreter"}]})").param,
            "tools[0]");
}

TEST(AnthropicRequest, ToolCallsAndToolResultsKeepIds) {
  EXPECT_EQ(MustTranslate(R"({"messages":[
      {"role":"user","content":"Weather in Paris and Rome?"},
      {"role":"assistant","content":"Let me check.","tool_calls":[
        {"id":"toolu_01","type":"function",
         "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
        {"id":"toolu_02","type":"function",
         "function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}}]},
      {"role":"tool","tool_call_id":"toolu_01","content":"18C sunny"},
      {"role":"tool","tool_call_id":"toolu_02","content":[{"type":"text","text":"21C"}]},
      {"role":"user","content":"Thanks"},
      {"role":"assistant","content":null,"tool_calls":[
        {"id":"toolu_03","type":"function","function":{"name":"now","arguments":""}}]}]})"),
            J(R"({"model":"claude-sonnet-4-5","max_tokens":4096,"messages":[
      {"role":"user","content":"Weather in Paris and Rome?"},
      {"role":"assistant","content":[
        {"type":"text","text":"Let me check."},
        {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city":"Paris"}},
        {"type":"tool_use","id":"toolu_02","name":"get_weather","input":{"city":"Rome"}}]},
      {"role":"user","content":[
        {"type":"tool_result","tool_use_id":"toolu_01","content":"18C sunny"},
        {"type":"tool_result","tool_use_id":"toolu_02","content":[{"type":"text","text":"21C"}]},
        {"type":"text","text":"Thanks"}]},
      {"role":"assistant","content":[
        {"type":"tool_use","id":"toolu_03","name":"now","input":{}}]}]})"));
}

// Prompt-caching breakpoints in the form LiteLLM and OpenRouter take them: on a part, on a
// message (its last block), on a tool message (its tool_result) and on a tool; a block with one
// is never collapsed into a plain string.
TEST(AnthropicRequest, CacheControlBreakpointsAreKept) {
  EXPECT_EQ(MustTranslate(R"({"messages":[
      {"role":"system","content":[{"type":"text","text":"Long rules.",
                                   "cache_control":{"type":"ephemeral","ttl":"1h"}}]},
      {"role":"user","content":[{"type":"text","text":"Read this."},
                                {"type":"image_url","image_url":{"url":"https://x.test/a.png"},
                                 "cache_control":{"type":"ephemeral"}}]},
      {"role":"assistant","content":"Read.","cache_control":{"type":"ephemeral"}},
      {"role":"tool","tool_call_id":"toolu_01","content":"42","cache_control":{"type":"ephemeral"}},
      {"role":"user","content":"And now?","cache_control":{"type":"ephemeral"}}],
      "tools":[{"type":"function","function":{"name":"now"},"cache_control":{"type":"ephemeral"}}]})"),
            J(R"({"model":"claude-sonnet-4-5","max_tokens":4096,
      "system":[{"type":"text","text":"Long rules.","cache_control":{"type":"ephemeral","ttl":"1h"}}],
      "messages":[
        {"role":"user","content":[{"type":"text","text":"Read this."},
          {"type":"image","source":{"type":"url","url":"https://x.test/a.png"},
           "cache_control":{"type":"ephemeral"}}]},
        {"role":"assistant","content":[{"type":"text","text":"Read.","cache_control":{"type":"ephemeral"}}]},
        {"role":"user","content":[
          {"type":"tool_result","tool_use_id":"toolu_01","content":"42","cache_control":{"type":"ephemeral"}},
          {"type":"text","text":"And now?","cache_control":{"type":"ephemeral"}}]}],
      "tools":[{"name":"now","input_schema":{"type":"object","properties":{}},
                "cache_control":{"type":"ephemeral"}}]})"));
  // A system string with a message-level breakpoint stays a block; null is no breakpoint.
  EXPECT_EQ(MustTranslate(R"({"messages":[{"role":"system","content":"Rules.",
                                           "cache_control":{"type":"ephemeral"}},
                                          {"role":"user","content":"hi","cache_control":null}]})"),
            J(R"({"model":"claude-sonnet-4-5","max_tokens":4096,
                  "system":[{"type":"text","text":"Rules.","cache_control":{"type":"ephemeral"}}],
                  "messages":[{"role":"user","content":"hi"}]})"));
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"user","content":[
                {"type":"text","text":"x","cache_control":"ephemeral"}]}]})")
                .param,
            "messages[0].content[0].cache_control");
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"user","content":"x","cache_control":{}}]})").param,
            "messages[0].cache_control");
  EXPECT_EQ(MustRefuse(R"({"messages":[],"tools":[{"type":"function","function":{"name":"f"},
                                                    "cache_control":[1]}]})")
                .param,
            "tools[0].cache_control");
}

TEST(AnthropicRequest, RefusesWhatCannotTranslate) {
  auto bad_args = MustRefuse(R"({"messages":[{"role":"assistant","tool_calls":[
      {"id":"t","type":"function","function":{"name":"f","arguments":"{\"city\": \"Par"}}]}]})");
  EXPECT_EQ(bad_args.code, ErrorCode::kInvalidRequest);
  EXPECT_EQ(bad_args.param, "messages[0].tool_calls[0].function.arguments");
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"assistant","tool_calls":[
      {"id":"t","type":"function","function":{"name":"f","arguments":"[1]"}}]}]})")
                .param,
            "messages[0].tool_calls[0].function.arguments");
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"tool","content":"x"}]})").param,
            "messages[0].tool_call_id");
  EXPECT_EQ(MustRefuse(R"({"messages":[{"role":"function","name":"f","content":"x"}]})").param,
            "messages[0].role");
  EXPECT_EQ(MustRefuse(R"({"messages":[],"n":2})").param, "n");
  EXPECT_EQ(MustRefuse(R"({"messages":[],"logprobs":true})").param, "logprobs");
  EXPECT_EQ(MustRefuse(R"({"messages":[],"response_format":{"type":"json_object"}})").param,
            "response_format");
  EXPECT_EQ(MustRefuse(R"({"messages":[],"stop":[1]})").param, "stop");
  EXPECT_EQ(MustRefuse(R"({"messages":"hi"})").param, "messages");
  // Accepted no-ops.
  MustTranslate(R"({"messages":[],"n":1,"logprobs":false,"response_format":{"type":"text"}})");
}

// ---- Responses ----

TEST(AnthropicResponse, Text) {
  auto out = ToChatCompletion(J(R"({"id":"msg_01","type":"message","role":"assistant",
      "model":"claude-sonnet-4-5-20250929",
      "content":[{"type":"text","text":"Hello"},{"type":"text","text":", world"}],
      "stop_reason":"end_turn","stop_sequence":null,
      "usage":{"input_tokens":12,"output_tokens":3}})"),
                              "claude-sonnet", 1700000000);
  EXPECT_EQ(out.body, J(R"({"id":"msg_01","object":"chat.completion","created":1700000000,
      "model":"claude-sonnet","choices":[{"index":0,"logprobs":null,"finish_reason":"stop",
        "message":{"role":"assistant","content":"Hello, world","refusal":null}}],
      "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,
               "prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":0}}})"));
}

TEST(AnthropicResponse, ToolUse) {
  auto out = ToChatCompletion(J(R"({"id":"msg_02","type":"message","role":"assistant",
      "model":"claude-sonnet-4-5",
      "content":[{"type":"thinking","thinking":"hmm","signature":"sig"},
                 {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city":"Paris"}},
                 {"type":"tool_use","id":"toolu_02","name":"now","input":{}}],
      "stop_reason":"tool_use","usage":{"input_tokens":5,"output_tokens":7}})"),
                              "");
  Json message = out.body["choices"][0]["message"];
  EXPECT_EQ(out.body["model"], "claude-sonnet-4-5");
  EXPECT_EQ(out.body["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_TRUE(message["content"].is_null());
  ASSERT_EQ(message["tool_calls"].size(), 2u);
  EXPECT_EQ(message["tool_calls"][0]["id"], "toolu_01");
  EXPECT_EQ(message["tool_calls"][0]["type"], "function");
  EXPECT_EQ(message["tool_calls"][0]["function"]["name"], "get_weather");
  // arguments is a JSON string: compare it parsed.
  EXPECT_EQ(J(message["tool_calls"][0]["function"]["arguments"].get<std::string>()),
            J(R"({"city":"Paris"})"));
  EXPECT_EQ(message["tool_calls"][1]["function"]["arguments"], "{}");
}

TEST(AnthropicResponse, StopReasons) {
  const std::map<std::string, Json> expected = {
      {"end_turn", "stop"},       {"stop_sequence", "stop"},     {"max_tokens", "length"},
      {"tool_use", "tool_calls"}, {"refusal", "content_filter"}, {"pause_turn", "stop"}};
  for (const auto& [anthropic, openai] : expected) {
    auto out = ToChatCompletion(
        Json{{"id", "m"}, {"content", Json::array()}, {"stop_reason", anthropic}}, "x");
    EXPECT_EQ(out.body["choices"][0]["finish_reason"], openai) << anthropic;
  }
  EXPECT_TRUE(FinishReason(nullptr).is_null());
}

TEST(AnthropicResponse, UsageWithCacheTokens) {
  auto out = ToChatCompletion(J(R"({"id":"msg_03","content":[{"type":"text","text":"ok"}],
      "stop_reason":"end_turn","usage":{"input_tokens":20,"output_tokens":8,
        "cache_read_input_tokens":1000,"cache_creation_input_tokens":300}})"),
                              "claude");
  EXPECT_EQ(out.body["usage"], J(R"({"prompt_tokens":1320,"completion_tokens":8,
      "total_tokens":1328,
      "prompt_tokens_details":{"cached_tokens":1000,"cache_write_tokens":300}})"));
  EXPECT_TRUE(out.usage.present);
  EXPECT_EQ(out.usage.input_tokens, 20);
  EXPECT_EQ(out.usage.output_tokens, 8);
  EXPECT_EQ(out.usage.cache_read_input_tokens, 1000);
  EXPECT_EQ(out.usage.cache_creation_input_tokens, 300);
  Usage edge = ToEdgeUsage(out.usage);
  EXPECT_EQ(edge.prompt_tokens, 1320);
  EXPECT_EQ(edge.completion_tokens, 8);
  EXPECT_EQ(edge.cached_tokens, 1000);
  EXPECT_EQ(edge.cache_write_tokens, 300);
  // The OpenAI form the client (and a streamed usage chunk) carries reads back the same.
  int64_t chars = 0;
  Usage relayed = UsageFromBody(out.body.dump(), &chars);
  EXPECT_EQ(relayed.prompt_tokens, 1320);
  EXPECT_EQ(relayed.cached_tokens, 1000);
  EXPECT_EQ(relayed.cache_write_tokens, 300);
}

// ---- Errors ----

TEST(AnthropicErrors, MapToOpenAiStatusAndRetry) {
  struct Case {
    int status;
    std::string type;
    int client_status;
    int outcome_status;
    bool retryable;
    std::string openai_type;
  };
  const std::vector<Case> cases = {
      {400, "invalid_request_error", 400, 400, false, "invalid_request_error"},
      {401, "authentication_error", 401, 401, true, "invalid_request_error"},
      {403, "permission_error", 403, 403, true, "invalid_request_error"},
      {404, "not_found_error", 404, 404, false, "invalid_request_error"},
      {413, "request_too_large", 413, 413, false, "invalid_request_error"},
      {429, "rate_limit_error", 429, 429, true, "requests"},
      {500, "api_error", 500, 500, true, "api_error"},
      {529, "overloaded_error", 503, 503, true, "api_error"},
  };
  for (const Case& c : cases) {
    Json body{{"type", "error"}, {"error", {{"type", c.type}, {"message", "why: " + c.type}}}};
    UpstreamError e = MessagesErrorToOpenAi(c.status, body);
    EXPECT_EQ(e.client_status, c.client_status) << c.type;
    EXPECT_EQ(e.outcome_status, c.outcome_status) << c.type;
    EXPECT_EQ(e.retryable, c.retryable) << c.type;
    EXPECT_EQ(e.anthropic_type, c.type);
    EXPECT_EQ(e.body["error"]["message"], "why: " + c.type);
    EXPECT_EQ(e.body["error"]["type"], c.openai_type) << c.type;
    EXPECT_TRUE(e.body["error"].contains("param"));
    EXPECT_TRUE(e.body["error"].contains("code"));
  }
  EXPECT_EQ(MessagesErrorToOpenAi(429, J(R"({"type":"error","error":{"type":"rate_limit_error",
                                            "message":"Slow down"}})"))
                .body,
            J(R"({"error":{"message":"Slow down","type":"requests","param":null,
                           "code":"rate_limit_exceeded"}})"));
}

TEST(AnthropicErrors, UnknownOrMissingTypeGoesByStatus) {
  UpstreamError overloaded = MessagesErrorToOpenAi(529, J("null"));
  EXPECT_EQ(overloaded.client_status, 503);
  EXPECT_TRUE(overloaded.retryable);
  UpstreamError gateway = MessagesErrorToOpenAi(502, J(R"({"error":{"type":"new_kind"}})"));
  EXPECT_EQ(gateway.client_status, 500);
  EXPECT_TRUE(gateway.retryable);
  EXPECT_EQ(gateway.body["error"]["message"], "The upstream provider answered with HTTP 502.");
  UpstreamError teapot = MessagesErrorToOpenAi(418, J("{}"));
  EXPECT_EQ(teapot.client_status, 400);
  EXPECT_FALSE(teapot.retryable);
}

// ---- Streams ----

// A realistic stream: text, then two tool_use blocks whose input_json_delta splits JSON values
// mid-token (inside a string, inside a number, inside `true`), with pings between.
constexpr std::string_view kToolStream =
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01ABC\",\"type\":\"message\","
    "\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],"
    "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,"
    "\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2048,\"output_tokens\":2}}}\n"
    "\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
    "\"text\":\"\"}}\n"
    "\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"Checking the weather \\u00e9\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\" for both cities.\"}}\n"
    "\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n"
    "\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\","
    "\"id\":\"toolu_01A\",\"name\":\"get_weather\",\"input\":{}}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"{\\\"city\\\": \\\"San Fr\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"ancisco\\\", \\\"days\\\": 1\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"4, \\\"metric\\\": tr\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"ue}\"}}\n"
    "\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n"
    "\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n"
    "\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\","
    "\"id\":\"toolu_01B\",\"name\":\"get_weather\",\"input\":{}}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"{\\\"ci\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"ty\\\": \\\"Rome\\\", \\\"tags\\\": [\\\"a\\\\\\\"b\\\", nu\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"ll]}\"}}\n"
    "\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n"
    "\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\","
    "\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n"
    "\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n"
    "\n";

std::vector<std::string> FeedAll(StreamTranslator& translator,
                                 const std::vector<std::string_view>& pieces) {
  std::vector<std::string> chunks;
  for (std::string_view piece : pieces) {
    for (std::string& chunk : translator.Feed(piece)) chunks.push_back(std::move(chunk));
  }
  chunks.push_back(translator.Finish());
  return chunks;
}

std::vector<std::string> Translate(std::string_view stream, bool include_usage,
                                   const std::vector<std::string_view>& pieces) {
  StreamTranslator translator("claude-sonnet", include_usage, 1700000000);
  return FeedAll(translator, pieces);
}

Json ChunkJson(const std::string& chunk) {
  EXPECT_TRUE(chunk.starts_with("data: ") && chunk.ends_with("\n\n")) << chunk;
  return J(std::string_view(chunk).substr(6, chunk.size() - 8));
}

TEST(AnthropicStream, TextThenTwoToolCalls) {
  auto chunks = Translate(kToolStream, /*include_usage=*/true, {kToolStream});
  ASSERT_GE(chunks.size(), 3u);
  EXPECT_EQ(chunks.back(), "data: [DONE]\n\n");

  // The first chunk carries the role; every chunk the id, model and created.
  Json first = ChunkJson(chunks[0]);
  EXPECT_EQ(first, J(R"({"id":"msg_01ABC","object":"chat.completion.chunk","created":1700000000,
      "model":"claude-sonnet","choices":[{"index":0,"delta":{"role":"assistant","content":""},
      "logprobs":null,"finish_reason":null}]})"));

  std::string content;
  std::map<int64_t, Json> calls;  // index → {id, name, arguments}
  std::vector<std::string> finish_reasons;
  Json usage;
  for (size_t i = 0; i + 1 < chunks.size(); ++i) {
    Json chunk = ChunkJson(chunks[i]);
    EXPECT_EQ(chunk["id"], "msg_01ABC");
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    if (chunk["choices"].empty()) {
      EXPECT_EQ(i, chunks.size() - 2) << "the usage chunk comes last";
      usage = chunk["usage"];
      continue;
    }
    Json choice = chunk["choices"][0];
    if (choice["finish_reason"].is_string()) finish_reasons.push_back(choice["finish_reason"]);
    Json delta = choice["delta"];
    if (delta.contains("content")) content += delta["content"].get<std::string>();
    if (delta.contains("tool_calls")) {
      ASSERT_EQ(delta["tool_calls"].size(), 1u);
      Json call = delta["tool_calls"][0];
      int64_t index = call["index"];
      if (call.contains("id")) {
        EXPECT_FALSE(calls.contains(index)) << "one header per tool call";
        EXPECT_EQ(call["type"], "function");
        EXPECT_EQ(call["function"]["arguments"], "");
        calls[index] = {{"id", call["id"]}, {"name", call["function"]["name"]}, {"arguments", ""}};
      } else {
        ASSERT_TRUE(calls.contains(index)) << "arguments before the header";
        calls[index]["arguments"] = calls[index]["arguments"].get<std::string>() +
                                    call["function"]["arguments"].get<std::string>();
      }
    }
  }
  EXPECT_EQ(content, "Checking the weather \xc3\xa9 for both cities.");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0]["id"], "toolu_01A");
  EXPECT_EQ(calls[0]["name"], "get_weather");
  EXPECT_EQ(J(calls[0]["arguments"].get<std::string>()),
            J(R"({"city":"San Francisco","days":14,"metric":true})"));
  EXPECT_EQ(calls[1]["id"], "toolu_01B");
  EXPECT_EQ(J(calls[1]["arguments"].get<std::string>()),
            J(R"({"city":"Rome","tags":["a\"b",null]})"));
  EXPECT_EQ(finish_reasons, std::vector<std::string>{"tool_calls"});
  EXPECT_EQ(usage, J(R"({"prompt_tokens":2620,"completion_tokens":89,"total_tokens":2709,
                         "prompt_tokens_details":{"cached_tokens":2048,
                                                  "cache_write_tokens":100}})"));
}

TEST(AnthropicStream, RawCountsAndNoUsageChunkUnlessAsked) {
  StreamTranslator translator("", /*include_usage=*/false);
  auto chunks = FeedAll(translator, {kToolStream});
  for (const std::string& chunk : chunks) {
    if (chunk == "data: [DONE]\n\n") continue;
    Json json = ChunkJson(chunk);
    EXPECT_FALSE(json["choices"].empty());
    EXPECT_EQ(json["model"], "claude-sonnet-4-5-20250929");  // none shown: the upstream's
  }
  EXPECT_TRUE(translator.finished());
  EXPECT_FALSE(translator.error());
  EXPECT_EQ(translator.finish_reason(), "tool_calls");
  EXPECT_EQ(translator.usage().input_tokens, 472);
  EXPECT_EQ(translator.usage().cache_creation_input_tokens, 100);
  EXPECT_EQ(translator.usage().cache_read_input_tokens, 2048);
  EXPECT_EQ(translator.usage().output_tokens, 89);
}

TEST(AnthropicStream, EveryChunkingGivesTheSameChunks) {
  const auto whole = Translate(kToolStream, true, {kToolStream});
  for (size_t cut = 0; cut <= kToolStream.size(); ++cut) {
    ASSERT_EQ(Translate(kToolStream, true, {kToolStream.substr(0, cut), kToolStream.substr(cut)}),
              whole)
        << "split at byte " << cut;
  }
  std::vector<std::string_view> bytes;
  for (size_t i = 0; i < kToolStream.size(); ++i) bytes.push_back(kToolStream.substr(i, 1));
  EXPECT_EQ(Translate(kToolStream, true, bytes), whole);
  // CRLF line ends frame the same events.
  std::string crlf;
  for (char c : kToolStream) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  EXPECT_EQ(Translate(crlf, true, {crlf}), whole);
}

TEST(AnthropicStream, StopReasonsAndMaxTokens) {
  std::string stream =
      "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\","
      "\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n"
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
      "\"delta\":{\"type\":\"text_delta\",\"text\":\"cut\"}}\n\n"
      "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
      "\"max_tokens\"},\"usage\":{\"output_tokens\":5}}\n\n"
      "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
  StreamTranslator translator("c", true);
  auto chunks = FeedAll(translator, {stream});
  ASSERT_EQ(chunks.size(), 5u);  // role, text, finish, usage, [DONE]
  EXPECT_EQ(ChunkJson(chunks[2])["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(ChunkJson(chunks[2])["choices"][0]["delta"], Json::object());
  EXPECT_EQ(ChunkJson(chunks[3])["usage"]["total_tokens"], 8);
}

TEST(AnthropicStream, ErrorEventIsFlagged) {
  std::string stream =
      "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\","
      "\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n"
      "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
      "\"message\":\"Overloaded\"}}\n\n"
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
      "\"delta\":{\"type\":\"text_delta\",\"text\":\"after\"}}\n\n";
  StreamTranslator translator("c", false);
  auto chunks = translator.Feed(stream);
  EXPECT_EQ(chunks.size(), 1u);  // the role chunk; nothing after the error
  ASSERT_TRUE(translator.error());
  EXPECT_EQ(translator.error()->type, "overloaded_error");
  EXPECT_EQ(translator.error()->message, "Overloaded");
  EXPECT_FALSE(translator.finished());
  EXPECT_TRUE(translator.Feed("data: {\"type\":\"message_stop\"}\n\n").empty());

  StreamTranslator garbled("c", false);
  garbled.Feed("data: {not json\n\n");
  ASSERT_TRUE(garbled.error());
  EXPECT_EQ(garbled.error()->type, "api_error");
}

}  // namespace
}  // namespace tollgate::edge::anthropic
