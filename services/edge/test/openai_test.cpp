// Unit tests of the wire format: request validation and rewriting, SSE framing, the usage-chunk
// filter, usage accounting and upstream URLs.
#include "src/openai.h"

#include <gtest/gtest.h>

#include <variant>

#include "src/http.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::json;

ParsedRequest MustParse(Endpoint endpoint, std::string_view body) {
  auto parsed = ParseRequest(endpoint, body);
  if (auto* error = std::get_if<RequestError>(&parsed)) {
    ADD_FAILURE() << "unexpected error: " << error->message;
    return {};
  }
  return std::get<ParsedRequest>(std::move(parsed));
}

RequestError MustFail(Endpoint endpoint, std::string_view body) {
  auto parsed = ParseRequest(endpoint, body);
  if (!std::holds_alternative<RequestError>(parsed)) {
    ADD_FAILURE() << "parsed although invalid: " << body;
    return {};
  }
  return std::get<RequestError>(parsed);
}

TEST(ParseRequest, RejectsMalformedAndIncompleteBodies) {
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, "{not json").param, "");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, "[1,2]").param, "");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, R"({"messages":[]})").param, "model");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, R"({"model":"","messages":[]})").param, "model");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, R"({"model":7,"messages":[]})").param, "model");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, R"({"model":"m"})").param, "messages");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, R"({"model":"m","messages":"hi"})").param,
            "messages");
  EXPECT_EQ(
      MustFail(Endpoint::kChatCompletions, R"({"model":"m","messages":[],"stream":"yes"})").param,
      "stream");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"model":"m"})").param, "prompt");
  EXPECT_EQ(MustFail(Endpoint::kEmbeddings, R"({"model":"m"})").param, "input");
}

TEST(ParseRequest, StreamAlwaysAsksUpstreamForUsage) {
  auto plain =
      MustParse(Endpoint::kChatCompletions,
                R"({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true})");
  EXPECT_TRUE(plain.stream);
  EXPECT_FALSE(plain.client_wants_usage);
  EXPECT_EQ(plain.body["stream_options"]["include_usage"], true);

  auto wants = MustParse(Endpoint::kChatCompletions,
                         R"({"model":"m","messages":[],"stream":true,
                             "stream_options":{"include_usage":true,"other":1}})");
  EXPECT_TRUE(wants.client_wants_usage);
  EXPECT_EQ(wants.body["stream_options"]["other"], 1);  // the client's other options stay

  auto declined = MustParse(Endpoint::kChatCompletions,
                            R"({"model":"m","messages":[],"stream":true,
                                "stream_options":{"include_usage":false}})");
  EXPECT_FALSE(declined.client_wants_usage);
  EXPECT_EQ(declined.body["stream_options"]["include_usage"], true);

  auto not_streamed = MustParse(Endpoint::kChatCompletions, R"({"model":"m","messages":[]})");
  EXPECT_FALSE(not_streamed.stream);
  EXPECT_FALSE(not_streamed.body.contains("stream_options"));
}

TEST(RenderUpstreamBody, ReplacesOnlyTheModelAndKeepsEverythingElse) {
  const std::string body =
      R"({"model":"public","messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"x":{"type":"integer"}}}}}],"tool_choice":"auto","response_format":{"type":"json_object"},"n":2,"logprobs":true,"top_logprobs":3,"temperature":0.7,"seed":12345678901,"user":"u-1","x_vendor_field":{"keep":[1,2.5,null]}})";
  auto request = MustParse(Endpoint::kChatCompletions, body);
  std::string out = RenderUpstreamBody(request, "gpt-4o-2024-08-06");
  auto original = Json::parse(body);
  auto sent = Json::parse(out);
  EXPECT_EQ(sent["model"], "gpt-4o-2024-08-06");
  sent["model"] = original["model"];
  EXPECT_EQ(sent, original);
  // Field order is the client's.
  EXPECT_LT(out.find("\"model\""), out.find("\"messages\""));
  EXPECT_LT(out.find("\"tools\""), out.find("\"x_vendor_field\""));
  // A second attempt renders for its own upstream model.
  EXPECT_EQ(Json::parse(RenderUpstreamBody(request, "other"))["model"], "other");
}

TEST(ParseRequest, EstimatesThePromptAndReadsMaxTokens) {
  auto chat = MustParse(Endpoint::kChatCompletions,
                        R"({"model":"m","max_tokens":50,"messages":[
                            {"role":"system","content":"12345678"},
                            {"role":"user","content":[{"type":"text","text":"1234"}]}]})");
  EXPECT_EQ(chat.prompt_estimate, 3);  // 12 characters
  EXPECT_EQ(chat.max_tokens, 50);
  auto newer = MustParse(Endpoint::kChatCompletions,
                         R"({"model":"m","max_completion_tokens":7,"messages":[]})");
  EXPECT_EQ(newer.max_tokens, 7);
  auto embed = MustParse(Endpoint::kEmbeddings, R"({"model":"m","input":["abcd","efgh"]})");
  EXPECT_EQ(embed.prompt_estimate, 2);
  EXPECT_FALSE(embed.stream);
}

TEST(Estimate, CountsCodePointsAndRoundsUp) {
  EXPECT_EQ(EstimateTokens(0), 0);
  EXPECT_EQ(EstimateTokens(1), 1);
  EXPECT_EQ(EstimateTokens(4), 1);
  EXPECT_EQ(EstimateTokens(5), 2);
  EXPECT_EQ(Utf8Length("h\xC3\xA9llo"), 5);              // é is two bytes, one character
  EXPECT_EQ(Utf8Length("\xE6\x97\xA5\xE6\x9C\xAC"), 2);  // 日本
}

std::vector<SseEvent> FeedInPieces(std::string_view stream, size_t piece) {
  SseParser parser;
  std::vector<SseEvent> events;
  for (size_t i = 0; i < stream.size(); i += piece) parser.Feed(stream.substr(i, piece), events);
  EXPECT_FALSE(parser.has_partial());
  return events;
}

TEST(SseParser, FramesEventsWhateverTheReadBoundaries) {
  const std::string stream =
      "data: {\"a\":1}\n\n"
      ": keep-alive comment\n\n"
      "event: message\r\ndata: line one\r\ndata:line two\r\n\r\n"
      "\n"  // a stray blank line is not an event
      "data: [DONE]\n\n";
  for (size_t piece : {stream.size(), size_t{1}, size_t{3}, size_t{7}}) {
    auto events = FeedInPieces(stream, piece);
    ASSERT_EQ(events.size(), 4u) << "piece " << piece;
    EXPECT_EQ(events[0].data, "{\"a\":1}");
    EXPECT_EQ(events[0].raw, "data: {\"a\":1}\n\n");
    EXPECT_FALSE(events[1].has_data);
    EXPECT_EQ(events[1].raw, ": keep-alive comment\n\n");
    EXPECT_EQ(events[2].data, "line one\nline two");
    EXPECT_EQ(events[2].raw, "event: message\r\ndata: line one\r\ndata:line two\r\n\r\n");
    EXPECT_EQ(events[3].data, "[DONE]");
  }
  SseParser parser;
  std::vector<SseEvent> events;
  parser.Feed("data: {\"partial\":", events);
  EXPECT_TRUE(events.empty());
  EXPECT_TRUE(parser.has_partial());
}

SseEvent Event(const std::string& data) {
  SseEvent e;
  e.raw = "data: " + data + "\n\n";
  e.data = data;
  e.has_data = true;
  return e;
}

const char* kContentChunk =
    R"({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello world"},"finish_reason":null}],"usage":null})";
const char* kUsageChunk =
    R"({"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}})";

TEST(StreamRelay, DropsTheUsageChunkTheClientDidNotAskFor) {
  StreamRelay relay(/*client_wants_usage=*/false);
  EXPECT_EQ(relay.OnEvent(Event(kContentChunk)), StreamRelay::Action::kForward);
  EXPECT_EQ(relay.OnEvent(Event(kUsageChunk)), StreamRelay::Action::kDrop);
  EXPECT_EQ(relay.OnEvent(Event("[DONE]")), StreamRelay::Action::kDone);
  ASSERT_TRUE(relay.usage().present);  // still counted for billing
  EXPECT_EQ(relay.usage().prompt_tokens, 12);
  EXPECT_EQ(relay.usage().completion_tokens, 3);
  EXPECT_EQ(relay.relayed_chars(), 11);
  EXPECT_EQ(relay.events_forwarded(), 1);
}

TEST(StreamRelay, ForwardsTheUsageChunkWhenAskedFor) {
  StreamRelay relay(/*client_wants_usage=*/true);
  EXPECT_EQ(relay.OnEvent(Event(kContentChunk)), StreamRelay::Action::kForward);
  EXPECT_EQ(relay.OnEvent(Event(kUsageChunk)), StreamRelay::Action::kForward);
  EXPECT_EQ(relay.usage().completion_tokens, 3);
}

TEST(StreamRelay, KeepsChunksWithoutChoicesThatCarryNoUsage) {
  StreamRelay relay(false);
  // Azure's first chunk: prompt filter results, no choices, no usage.
  EXPECT_EQ(relay.OnEvent(Event(R"({"choices":[],"prompt_filter_results":[{"prompt_index":0}]})")),
            StreamRelay::Action::kForward);
  // A usage field on a chunk that has choices is not a usage-only chunk.
  EXPECT_EQ(
      relay.OnEvent(Event(
          R"({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}})")),
      StreamRelay::Action::kForward);
  EXPECT_EQ(relay.OnEvent(Event("not json at all")), StreamRelay::Action::kForward);
  SseEvent comment;
  comment.raw = ": ping\n\n";
  EXPECT_EQ(relay.OnEvent(comment), StreamRelay::Action::kForward);
  EXPECT_TRUE(relay.usage().present);
}

TEST(StreamRelay, CountsToolCallArgumentsAndTextCompletions) {
  StreamRelay relay(false);
  relay.OnEvent(Event(
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"get","arguments":"{\"x\":1}"}}]}}]})"));
  EXPECT_EQ(relay.relayed_chars(), 3 + 7);
  relay.OnEvent(Event(R"({"object":"text_completion","choices":[{"index":0,"text":"abcd"}]})"));
  EXPECT_EQ(relay.relayed_chars(), 14);
  EXPECT_FALSE(relay.usage().present);
}

TEST(UsageFromBody, ReadsUsageAndCountsGeneratedText) {
  int64_t chars = 0;
  auto usage = UsageFromBody(
      R"({"choices":[{"message":{"role":"assistant","content":"four"}},{"message":{"content":"xy"}}],"usage":{"prompt_tokens":9,"completion_tokens":4}})",
      &chars);
  EXPECT_TRUE(usage.present);
  EXPECT_EQ(usage.prompt_tokens, 9);
  EXPECT_EQ(usage.completion_tokens, 4);
  EXPECT_EQ(chars, 6);
  EXPECT_FALSE(UsageFromBody("garbage", &chars).present);
}

TEST(UpstreamUrl, BuildsOpenAiAndAzureForms) {
  auto openai = ParseUpstreamUrl(
      "https://api.openai.com/v1/",
      UpstreamSuffix(ProviderKind::kOpenAi, Endpoint::kChatCompletions, "gpt-4o", ""));
  ASSERT_TRUE(openai);
  EXPECT_TRUE(openai->tls);
  EXPECT_EQ(openai->host, "api.openai.com");
  EXPECT_EQ(openai->port, 443);
  EXPECT_EQ(openai->target, "/v1/chat/completions");

  auto azure = ParseUpstreamUrl(
      "https://x.openai.azure.com",
      UpstreamSuffix(ProviderKind::kAzureOpenAi, Endpoint::kEmbeddings, "my deploy", "2024-06-01"));
  ASSERT_TRUE(azure);
  EXPECT_EQ(azure->target, "/openai/deployments/my%20deploy/embeddings?api-version=2024-06-01");

  auto local = ParseUpstreamUrl("http://10.0.0.5:8000/v1", "/completions");
  ASSERT_TRUE(local);
  EXPECT_FALSE(local->tls);
  EXPECT_EQ(local->host, "10.0.0.5");
  EXPECT_EQ(local->port, 8000);
  EXPECT_EQ(local->target, "/v1/completions");

  auto v6 = ParseUpstreamUrl("http://[::1]:9000", "/embeddings");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 9000);

  EXPECT_FALSE(ParseUpstreamUrl("ftp://x/v1", "/a"));
  EXPECT_FALSE(ParseUpstreamUrl("https://user:pw@x/v1", "/a"));
  EXPECT_FALSE(ParseUpstreamUrl("https://x:99999/v1", "/a"));
  EXPECT_FALSE(ParseUpstreamUrl("https:///v1", "/a"));
}

TEST(RequestId, KeepsPlainClientIdsAndReplacesOthers) {
  EXPECT_EQ(AcceptOrMakeRequestId("abc-123_x.y:z"), "abc-123_x.y:z");
  std::string made = AcceptOrMakeRequestId("");
  EXPECT_EQ(made.rfind("req_", 0), 0u);
  EXPECT_EQ(made.size(), 36u);
  EXPECT_NE(made, AcceptOrMakeRequestId(""));
  EXPECT_NE(AcceptOrMakeRequestId("bad\r\nheader"), "bad\r\nheader");
  EXPECT_NE(AcceptOrMakeRequestId(std::string(200, 'a')), std::string(200, 'a'));
}

TEST(Percent, RoundTrips) {
  EXPECT_EQ(PercentEncode("a/b c"), "a%2Fb%20c");
  EXPECT_EQ(PercentDecode("a%2Fb%20c"), "a/b c");
  EXPECT_EQ(PercentDecode("bad%2"), "bad%2");
}

TEST(StreamTranscript, PutsAStreamBackTogether) {
  StreamTranscript t(1000);
  t.OnData(
      R"({"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})");
  t.OnData(
      R"({"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"sk-ant-api03-Zy"}}]})");
  t.OnData(R"({"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"XwVuTsRqPoNm"}}]})");
  t.OnData(
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":"{\"a\""}}]}}]})");
  t.OnData(
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]})");
  t.OnData(R"({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})");
  t.OnData(R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}})");
  t.OnData("[DONE]");
  t.OnData("not json");
  auto j = nlohmann::json::parse(t.Json());
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"], "c1");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "sk-ant-api03-ZyXwVuTsRqPoNm");
  EXPECT_EQ(j["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["total_tokens"], 5);
  EXPECT_FALSE(t.overflowed());

  StreamTranscript small(4);
  small.OnData(R"({"choices":[{"index":0,"text":"abcdef"}]})");
  auto k = nlohmann::json::parse(small.Json());
  EXPECT_EQ(k["object"], "text_completion");
  EXPECT_EQ(k["choices"][0]["text"], "abcd");
  EXPECT_TRUE(small.overflowed());
}

}  // namespace
}  // namespace tollgate::edge
