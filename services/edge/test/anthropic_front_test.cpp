// Golden tests of Anthropic's Messages API in front of an OpenAI-type upstream
// (src/anthropic_front.h): Messages request → chat request, chat answer → message, OpenAI chunks →
// Anthropic events (fed at every byte split), errors both ways. Compared structurally (parsed,
// then equal as JSON values).
#include "src/anthropic_front.h"

#include <gtest/gtest.h>

#include <string>
#include <variant>
#include <vector>

namespace tollgate::edge::anthropic {
namespace {

Json J(std::string_view text) { return Json::parse(text); }

Json MustTranslate(std::string_view messages, bool newer = true) {
  auto result = ToChatRequest(J(messages), "gpt-up", newer);
  if (auto* error = std::get_if<TranslationError>(&result)) {
    ADD_FAILURE() << "unexpected error: " << error->message;
    return {};
  }
  return std::get<Json>(std::move(result));
}

TranslationError MustRefuse(std::string_view messages) {
  auto result = ToChatRequest(J(messages), "gpt-up", true);
  if (!std::holds_alternative<TranslationError>(result)) {
    ADD_FAILURE() << "translated although untranslatable: " << messages;
    return {};
  }
  return std::get<TranslationError>(result);
}

// ---- Parsing ----

TEST(MessagesParse, RequiresModelMessagesAndMaxTokens) {
  auto fail = [](Endpoint e, std::string_view body) {
    auto r = ParseMessagesRequest(e, body);
    if (!std::holds_alternative<RequestError>(r)) {
      ADD_FAILURE() << "parsed: " << body;
      return std::string();
    }
    return std::get<RequestError>(r).param;
  };
  EXPECT_EQ(fail(Endpoint::kMessages, "{nope"), "");
  EXPECT_EQ(fail(Endpoint::kMessages, R"({"messages":[],"max_tokens":5})"), "model");
  EXPECT_EQ(fail(Endpoint::kMessages, R"({"model":"m","max_tokens":5})"), "messages");
  EXPECT_EQ(fail(Endpoint::kMessages, R"({"model":"m","messages":[]})"), "max_tokens");
  EXPECT_EQ(fail(Endpoint::kMessages, R"({"model":"m","messages":[],"max_tokens":0})"),
            "max_tokens");
  EXPECT_EQ(fail(Endpoint::kMessages, R"({"model":"m","messages":[],"max_tokens":"9"})"),
            "max_tokens");
  EXPECT_EQ(fail(Endpoint::kMessages, R"({"model":"m","messages":[],"max_tokens":9,"stream":1})"),
            "stream");
  // count_tokens has no max_tokens: nothing is generated.
  auto counted = ParseMessagesRequest(Endpoint::kCountTokens, R"({"model":"m","messages":[]})");
  ASSERT_TRUE(std::holds_alternative<ParsedRequest>(counted));
  EXPECT_EQ(std::get<ParsedRequest>(counted).max_tokens, 0);
}

TEST(MessagesParse, EstimateIsTheBodyBoundWithImagesPerBlock) {
  std::string data(30000, 'A');
  std::string body = R"({"model":"m","max_tokens":100,"stream":true,"messages":[{"role":"user",
    "content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":")" +
                     data + R"("}},{"type":"text","text":"what is this"}]}]})";
  auto parsed = ParseMessagesRequest(Endpoint::kMessages, body);
  ASSERT_TRUE(std::holds_alternative<ParsedRequest>(parsed));
  const auto& r = std::get<ParsedRequest>(parsed);
  EXPECT_EQ(r.model, "m");
  EXPECT_TRUE(r.stream);
  EXPECT_EQ(r.max_tokens, 100);
  EXPECT_EQ(r.endpoint, Endpoint::kMessages);
  const int64_t bytes = static_cast<int64_t>(body.size() - data.size());
  EXPECT_EQ(r.prompt_estimate, (bytes + 2) / 3 + kImageTokens);
}

// ---- Requests ----

TEST(MessagesToChat, TextSystemAndSampling) {
  EXPECT_EQ(MustTranslate(R"({"model":"claude","max_tokens":300,"system":"Be brief.",
      "messages":[{"role":"user","content":"Hello"},{"role":"assistant","content":"Hi"},
                  {"role":"user","content":[{"type":"text","text":"More"}]}],
      "temperature":0.3,"top_p":0.9,"top_k":5,"stop_sequences":["END"],
      "metadata":{"user_id":"u-7"},"stream":true})"),
            J(R"({"model":"gpt-up","messages":[{"role":"system","content":"Be brief."},
      {"role":"user","content":"Hello"},{"role":"assistant","content":"Hi"},
      {"role":"user","content":"More"}],
      "max_completion_tokens":300,"stop":["END"],"temperature":0.3,"top_p":0.9,"user":"u-7",
      "stream":true,"stream_options":{"include_usage":true}})"));
  // OpenAI-compatible servers know max_tokens; system blocks are joined.
  EXPECT_EQ(MustTranslate(R"({"model":"c","max_tokens":10,
      "system":[{"type":"text","text":"A","cache_control":{"type":"ephemeral"}},{"type":"text","text":"B"}],
      "messages":[{"role":"user","content":"x"}]})",
                          false),
            J(R"({"model":"gpt-up","messages":[{"role":"system","content":"A\nB"},
      {"role":"user","content":"x"}],"max_tokens":10})"));
}

TEST(MessagesToChat, Images) {
  EXPECT_EQ(MustTranslate(R"({"model":"c","max_tokens":10,"messages":[{"role":"user","content":[
      {"type":"text","text":"compare"},
      {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}},
      {"type":"image","source":{"type":"url","url":"https://example.com/a.jpg"}}]}]})"),
            J(R"({"model":"gpt-up","max_completion_tokens":10,"messages":[{"role":"user","content":[
      {"type":"text","text":"compare"},
      {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR"}},
      {"type":"image_url","image_url":{"url":"https://example.com/a.jpg"}}]}]})"));
}

TEST(MessagesToChat, ToolsChoiceToolUseAndResults) {
  EXPECT_EQ(MustTranslate(R"({"model":"c","max_tokens":10,
      "tools":[{"name":"weather","description":"Weather","input_schema":{"type":"object",
                "properties":{"city":{"type":"string"}}}},{"name":"time","input_schema":{"type":"object"}}],
      "tool_choice":{"type":"any","disable_parallel_tool_use":true},
      "messages":[{"role":"user","content":"weather and time in Paris"},
        {"role":"assistant","content":[{"type":"text","text":"Checking."},
          {"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Paris"}},
          {"type":"tool_use","id":"toolu_2","name":"time","input":{}}]},
        {"role":"user","content":[
          {"type":"tool_result","tool_use_id":"toolu_1","content":"sunny"},
          {"type":"tool_result","tool_use_id":"toolu_2","content":[{"type":"text","text":"noon"}],"is_error":true},
          {"type":"text","text":"thanks"}]}]})"),
            J(R"({"model":"gpt-up","max_completion_tokens":10,
      "tools":[{"type":"function","function":{"name":"weather","description":"Weather",
                "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
               {"type":"function","function":{"name":"time","parameters":{"type":"object"}}}],
      "tool_choice":"required","parallel_tool_calls":false,
      "messages":[{"role":"user","content":"weather and time in Paris"},
        {"role":"assistant","content":"Checking.","tool_calls":[
          {"id":"toolu_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Paris\"}"}},
          {"id":"toolu_2","type":"function","function":{"name":"time","arguments":"{}"}}]},
        {"role":"tool","tool_call_id":"toolu_1","content":"sunny"},
        {"role":"tool","tool_call_id":"toolu_2","content":"Error: noon"},
        {"role":"user","content":"thanks"}]})"));
  auto choice = [](std::string_view c) {
    return MustTranslate(std::string(R"({"model":"c","max_tokens":1,"tools":[{"name":"t",
        "input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"x"}],
        "tool_choice":)") +
                         std::string(c) + "}")["tool_choice"];
  };
  EXPECT_EQ(choice(R"({"type":"auto"})"), J(R"("auto")"));
  EXPECT_EQ(choice(R"({"type":"none"})"), J(R"("none")"));
  EXPECT_EQ(choice(R"({"type":"tool","name":"t"})"),
            J(R"({"type":"function","function":{"name":"t"}})"));
  // An assistant turn of tool calls only has content null.
  Json only_calls = MustTranslate(R"({"model":"c","max_tokens":1,"messages":[
      {"role":"user","content":"x"},{"role":"assistant","content":[
      {"type":"tool_use","id":"a","name":"t","input":{"k":1}}]}]})");
  EXPECT_TRUE(only_calls["messages"][1]["content"].is_null());
}

TEST(MessagesToChat, RefusesWhatCannotTranslate) {
  EXPECT_EQ(MustRefuse(R"({"model":"c","max_tokens":1,"messages":[{"role":"user","content":[
      {"type":"document","source":{"type":"text","data":"x","media_type":"text/plain"}}]}]})")
                .param,
            "messages.0.content.0");
  EXPECT_EQ(MustRefuse(R"({"model":"c","max_tokens":1,"messages":[{"role":"user","content":"x"}],
      "tools":[{"type":"web_search_20250305","name":"web_search"}]})")
                .param,
            "tools.0");
  EXPECT_EQ(
      MustRefuse(R"({"model":"c","max_tokens":1,"messages":[{"role":"system","content":"x"}]})")
          .param,
      "messages.0.role");
  EXPECT_EQ(MustRefuse(R"({"model":"c","max_tokens":1,"messages":[{"role":"user","content":"x"}],
      "tool_choice":{"type":"sometimes"}})")
                .param,
            "tool_choice");
}

// ---- Answers ----

TEST(ChatToMessage, TextStopReasonsAndUsageWithCache) {
  Json answer = J(R"({"id":"chatcmpl-1","object":"chat.completion","model":"gpt-up","choices":[
      {"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],
      "usage":{"prompt_tokens":100,"completion_tokens":7,"total_tokens":107,
               "prompt_tokens_details":{"cached_tokens":60}}})");
  EXPECT_EQ(ToMessage(answer, "claude-front", Json()),
            J(R"({"id":"chatcmpl-1","type":"message","role":"assistant","model":"claude-front",
      "content":[{"type":"text","text":"Hello there"}],"stop_reason":"end_turn","stop_sequence":null,
      "usage":{"input_tokens":40,"output_tokens":7,"cache_creation_input_tokens":0,
               "cache_read_input_tokens":60}})"));
  EXPECT_EQ(StopReason("length", nullptr, nullptr), "max_tokens");
  EXPECT_EQ(StopReason("tool_calls", nullptr, nullptr), "tool_use");
  EXPECT_EQ(StopReason("content_filter", nullptr, nullptr), "refusal");
  EXPECT_EQ(StopReason("stop", nullptr, J(R"(["END"])")), "end_turn");
  EXPECT_TRUE(StopReason(nullptr, nullptr, nullptr).is_null());
  // A server that says which stop sequence matched (vLLM's stop_reason).
  Json matched = J(R"({"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"a"},
      "finish_reason":"stop","stop_reason":"END"}]})");
  Json message = ToMessage(matched, "m", J(R"(["END","STOP"])"));
  EXPECT_EQ(message["stop_reason"], "stop_sequence");
  EXPECT_EQ(message["stop_sequence"], "END");
}

TEST(ChatToMessage, ParallelToolCalls) {
  Json answer = J(R"({"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":null,
      "tool_calls":[{"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}},
                    {"id":"call_2","type":"function","function":{"name":"time","arguments":"not json"}}]},
      "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":9}})");
  EXPECT_EQ(ToMessage(answer, "m", Json()),
            J(R"({"id":"c","type":"message","role":"assistant","model":"m","content":[
      {"type":"tool_use","id":"call_1","name":"weather","input":{"city":"Oslo"}},
      {"type":"tool_use","id":"call_2","name":"time","input":{}}],
      "stop_reason":"tool_use","stop_sequence":null,
      "usage":{"input_tokens":5,"output_tokens":9,"cache_creation_input_tokens":0,
               "cache_read_input_tokens":0}})"));
}

// ---- Errors ----

TEST(MessagesErrors, OpenAiErrorsBecomeAnthropics) {
  auto e = ChatErrorToMessages(
      429,
      J(R"({"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}})"));
  EXPECT_EQ(e.status, 429);
  EXPECT_EQ(e.body,
            R"({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}})");
  EXPECT_EQ(J(ChatErrorToMessages(400, J(R"({"error":{"message":"bad"}})")).body)["error"]["type"],
            "invalid_request_error");
  EXPECT_EQ(J(ChatErrorToMessages(401, Json()).body)["error"]["type"], "authentication_error");
  EXPECT_EQ(J(ChatErrorToMessages(403, Json()).body)["error"]["type"], "permission_error");
  EXPECT_EQ(J(ChatErrorToMessages(404, Json()).body)["error"]["type"], "not_found_error");
  auto overloaded = ChatErrorToMessages(503, Json());
  EXPECT_EQ(overloaded.status, 529);
  EXPECT_EQ(J(overloaded.body)["error"]["type"], "overloaded_error");
  EXPECT_FALSE(J(overloaded.body)["error"]["message"].get<std::string>().empty());
  EXPECT_EQ(J(ChatErrorToMessages(500, Json()).body)["error"]["type"], "api_error");
}

TEST(MessagesErrors, EdgeErrorCodesHaveOneAnthropicForm) {
  EXPECT_EQ(ErrorBody(ErrorCode::kInvalidApiKey, "bad key"),
            R"({"type":"error","error":{"type":"authentication_error","message":"bad key"}})");
  EXPECT_EQ(ErrorStatus(ErrorCode::kInvalidApiKey), 401);
  EXPECT_EQ(ErrorType(ErrorCode::kPermissionDenied), "permission_error");
  EXPECT_EQ(ErrorType(ErrorCode::kModelNotFound), "not_found_error");
  EXPECT_EQ(ErrorType(ErrorCode::kInsufficientQuota), "rate_limit_error");
  EXPECT_EQ(ErrorStatus(ErrorCode::kRateLimited), 429);
  EXPECT_EQ(ErrorType(ErrorCode::kNoHealthyUpstream), "overloaded_error");
  EXPECT_EQ(ErrorStatus(ErrorCode::kNoHealthyUpstream), 529);
  EXPECT_EQ(ErrorType(ErrorCode::kUpstreamError), "api_error");
  EXPECT_EQ(ErrorStatus(ErrorCode::kUpstreamError), 502);
  EXPECT_EQ(ErrorType(ErrorCode::kInvalidRequest), "invalid_request_error");
  for (int i = 0; i < kErrorCodeCount; ++i) {
    auto code = static_cast<ErrorCode>(i);
    Json body = J(ErrorBody(code, "m"));
    EXPECT_EQ(body["type"], "error");
    EXPECT_FALSE(ErrorType(code).empty());
    EXPECT_GE(ErrorStatus(code), 400);
  }
  EXPECT_EQ(ErrorEvent(R"({"type":"error"})"), "event: error\ndata: {\"type\":\"error\"}\n\n");
}

// ---- Streams ----

// An OpenAI stream: role chunk, text, two parallel tool calls whose arguments are split across
// JSON tokens, finish, the usage chunk with cached tokens, [DONE].
const char* kChunks[] = {
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{"content":"Let me "},"finish_reason":null}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{"content":"check."},"finish_reason":null}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"weather","arguments":""}}]},"finish_reason":null}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"finish_reason":null}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Oslo\"}"}}]},"finish_reason":null}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"time","arguments":"{\"tz\":"}}]},"finish_reason":null}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\"CET\"}"}}]},"finish_reason":null}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]})",
    R"({"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-up","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":20,"total_tokens":70,"prompt_tokens_details":{"cached_tokens":32}}})",
    "[DONE]",
};

std::string OpenAiStream() {
  std::string out;
  for (const char* chunk : kChunks) out += "data: " + std::string(chunk) + "\n\n";
  return out;
}

// The events as (name, data JSON) pairs.
std::vector<std::pair<std::string, Json>> Parse(const std::vector<std::string>& events) {
  std::vector<std::pair<std::string, Json>> out;
  for (const std::string& e : events) {
    EXPECT_TRUE(e.starts_with("event: ")) << e;
    EXPECT_TRUE(e.ends_with("\n\n")) << e;
    size_t nl = e.find('\n');
    EXPECT_EQ(e.substr(nl + 1, 6), "data: ");
    out.emplace_back(e.substr(7, nl - 7), J(e.substr(nl + 7)));
  }
  return out;
}

TEST(ChunkTranslator, TextThenParallelToolCalls) {
  ChunkTranslator t("claude-front", Json());
  auto events = Parse(t.Feed(OpenAiStream()));
  std::vector<std::pair<std::string, Json>> want = {
      {"message_start", J(R"({"type":"message_start","message":{"id":"chatcmpl-9","type":"message",
          "role":"assistant","model":"claude-front","content":[],"stop_reason":null,
          "stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}})")},
      {"content_block_start", J(R"({"type":"content_block_start","index":0,
          "content_block":{"type":"text","text":""}})")},
      {"content_block_delta", J(R"({"type":"content_block_delta","index":0,
          "delta":{"type":"text_delta","text":"Let me "}})")},
      {"content_block_delta", J(R"({"type":"content_block_delta","index":0,
          "delta":{"type":"text_delta","text":"check."}})")},
      {"content_block_stop", J(R"({"type":"content_block_stop","index":0})")},
      {"content_block_start", J(R"({"type":"content_block_start","index":1,
          "content_block":{"type":"tool_use","id":"call_a","name":"weather","input":{}}})")},
      {"content_block_delta", J(R"({"type":"content_block_delta","index":1,
          "delta":{"type":"input_json_delta","partial_json":"{\"ci"}})")},
      {"content_block_delta", J(R"({"type":"content_block_delta","index":1,
          "delta":{"type":"input_json_delta","partial_json":"ty\":\"Oslo\"}"}})")},
      {"content_block_stop", J(R"({"type":"content_block_stop","index":1})")},
      {"content_block_start", J(R"({"type":"content_block_start","index":2,
          "content_block":{"type":"tool_use","id":"call_b","name":"time","input":{}}})")},
      {"content_block_delta", J(R"({"type":"content_block_delta","index":2,
          "delta":{"type":"input_json_delta","partial_json":"{\"tz\":"}})")},
      {"content_block_delta", J(R"({"type":"content_block_delta","index":2,
          "delta":{"type":"input_json_delta","partial_json":"\"CET\"}"}})")},
      {"content_block_stop", J(R"({"type":"content_block_stop","index":2})")},
      {"message_delta", J(R"({"type":"message_delta","delta":{"stop_reason":"tool_use",
          "stop_sequence":null},"usage":{"input_tokens":18,"output_tokens":20,
          "cache_creation_input_tokens":0,"cache_read_input_tokens":32}})")},
      {"message_stop", J(R"({"type":"message_stop"})")},
  };
  EXPECT_EQ(events, want);
  EXPECT_TRUE(t.finished());
  EXPECT_EQ(t.Finish(), "");
  EXPECT_TRUE(t.usage().present);
  EXPECT_EQ(t.usage().prompt_tokens, 50);
  EXPECT_EQ(t.usage().completion_tokens, 20);
  EXPECT_EQ(t.usage().cached_tokens, 32);
  EXPECT_FALSE(t.error());
}

TEST(ChunkTranslator, EveryByteSplitGivesTheSameEvents) {
  const std::string stream = OpenAiStream();
  ChunkTranslator whole("m", Json());
  std::vector<std::string> want = whole.Feed(stream);
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    ChunkTranslator t("m", Json());
    std::vector<std::string> got = t.Feed(stream.substr(0, cut));
    for (auto& e : t.Feed(stream.substr(cut))) got.push_back(std::move(e));
    ASSERT_EQ(got, want) << "split at byte " << cut;
  }
  // And one byte at a time.
  ChunkTranslator t("m", Json());
  std::vector<std::string> got;
  for (char c : stream)
    for (auto& e : t.Feed(std::string_view(&c, 1))) got.push_back(std::move(e));
  EXPECT_EQ(got, want);
}

TEST(ChunkTranslator, LengthAndAMissingDoneAreClosedByFinish) {
  ChunkTranslator t("m", Json());
  auto events = Parse(t.Feed(
      "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ab\"}}]}\n\n"
      "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}"
      "\n\n"));
  ASSERT_EQ(events.size(), 3u);  // message_start, block start, delta
  EXPECT_FALSE(t.finished());
  std::string tail = t.Finish();
  std::vector<std::string> split;
  for (size_t at = 0; at < tail.size();) {
    size_t end = tail.find("\n\n", at) + 2;
    split.push_back(tail.substr(at, end - at));
    at = end;
  }
  auto closing = Parse(split);
  ASSERT_EQ(closing.size(), 3u);
  EXPECT_EQ(closing[0].first, "content_block_stop");
  EXPECT_EQ(closing[1].second["delta"]["stop_reason"], "max_tokens");
  EXPECT_EQ(closing[2].first, "message_stop");
  EXPECT_FALSE(t.usage().present);  // no usage chunk: the relay estimates from relayed_chars
  EXPECT_EQ(t.relayed_chars(), 2);
}

TEST(ChunkTranslator, ErrorChunkIsFlagged) {
  ChunkTranslator t("m", Json());
  t.Feed("data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n");
  EXPECT_TRUE(
      t.Feed("data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n").empty());
  ASSERT_TRUE(t.error());
  EXPECT_EQ(t.error()->type, "api_error");
  EXPECT_EQ(t.error()->message, "boom");
  EXPECT_EQ(t.Finish(), "");
}

TEST(MessagesStreamMeter, ReadsUsageAndHoldsBackErrors) {
  MessagesStreamMeter meter;
  SseParser parser;
  std::vector<SseEvent> events;
  parser.Feed(
      "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":"
      "{\"input_tokens\":10,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":5,"
      "\"output_tokens\":1}}}\n\n"
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
      "\"delta\":{\"type\":\"text_delta\",\"text\":\"héllo\"}}\n\n"
      "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
      "\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\n"
      "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
      "\"message\":\"Overloaded\"}}\n\n",
      events);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_TRUE(meter.OnEvent(events[0]));
  EXPECT_TRUE(meter.OnEvent(events[1]));
  EXPECT_TRUE(meter.OnEvent(events[2]));
  EXPECT_FALSE(meter.OnEvent(events[3]));
  EXPECT_EQ(meter.usage().input_tokens, 10);
  EXPECT_EQ(meter.usage().cache_read_input_tokens, 100);
  EXPECT_EQ(meter.usage().cache_creation_input_tokens, 5);
  EXPECT_EQ(meter.usage().output_tokens, 12);
  EXPECT_EQ(meter.relayed_chars(), 5);
  ASSERT_TRUE(meter.error());
  EXPECT_EQ(meter.error()->type, "overloaded_error");
  EXPECT_EQ(meter.error_event(), events[3].raw);
}

}  // namespace
}  // namespace tollgate::edge::anthropic
