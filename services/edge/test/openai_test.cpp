// Unit tests of the wire format: request validation and rewriting, SSE framing, the usage-chunk
// filter, usage accounting and upstream URLs.
#include "src/openai.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
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

// The body the tree renders (what every attempt sent before the client's bytes were kept).
std::string TreeRendering(ParsedRequest request, std::string_view upstream_model,
                          ProviderKind provider = ProviderKind::kOpenAi) {
  request.BodyChanged();
  return RenderUpstreamBody(request, upstream_model, provider);
}

TEST(RenderUpstreamBody, SendsTheClientsOwnBytesWhenNothingChanges) {
  // Spacing, escapes, number spellings and field order as the client wrote them.
  const std::string body =
      "{ \"model\" : \"gpt-4o-mini\",\n  \"messages\": [{\"role\":\"user\",\"content\":"
      "\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\/ \xc3\xa9\"}],\n  \"temperature\": 1.0e0,"
      " \"top_p\": 0.50, \"seed\": 18446744073709551615, \"max_tokens\": 16,"
      " \"stream\": false, \"metadata\": {\"a\": [1, -2, 3.25e-3, true, null]} }\n";
  auto request = MustParse(Endpoint::kChatCompletions, body);
  ASSERT_FALSE(request.source.empty());
  EXPECT_EQ(RenderUpstreamBody(request, ""), body);
  EXPECT_EQ(RenderUpstreamBody(request, "gpt-4o-mini"), body);
  // Every attempt gets its own model in the same place, nothing else touched.
  std::string expected = body;
  expected.replace(expected.find("\"gpt-4o-mini\""), 13, "\"gpt-4o-2024-08-06\"");
  EXPECT_EQ(RenderUpstreamBody(request, "gpt-4o-2024-08-06"), expected);
  EXPECT_EQ(request.body["model"], "gpt-4o-2024-08-06");
  // It says what the tree's rendering says.
  EXPECT_EQ(Json::parse(RenderUpstreamBody(request, "u")),
            Json::parse(TreeRendering(request, "u")));
  // A stream that asked for usage itself is forwarded as sent as well.
  const std::string streamed =
      R"({"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]})";
  auto s = MustParse(Endpoint::kChatCompletions, streamed);
  EXPECT_EQ(RenderUpstreamBody(s, ""), streamed);
  // Azure: the deployment replaces the body's model in its place.
  auto azure = ParseRequest(Endpoint::kChatCompletions, R"({"messages":[],"model":"x"})", "dep");
  auto& a = std::get<ParsedRequest>(azure);
  EXPECT_EQ(RenderUpstreamBody(a, ""), R"({"messages":[],"model":"dep"})");
}

TEST(RenderUpstreamBody, SplicesAModelNameThatNeedsEscapes) {
  const std::string body = R"({"messages":[],"model":"m","n":1})";
  auto request = MustParse(Endpoint::kChatCompletions, body);
  for (std::string model : {std::string("we\"ird\\name\n\t\x01/x"), std::string("caf\xc3\xa9"),
                            std::string("bad\xff utf8"), std::string("org/model:v1")}) {
    const std::string out = RenderUpstreamBody(request, model);
    EXPECT_EQ(out, TreeRendering(request, model)) << model;
    auto sent = Json::parse(out);
    if (model.find('\xff') == std::string::npos) {
      EXPECT_EQ(sent["model"], model);
    }
    EXPECT_TRUE(out.starts_with(R"({"messages":[],"model":")"));
    EXPECT_TRUE(out.ends_with(R"(,"n":1})"));
  }
}

TEST(RenderUpstreamBody, RendersTheTreeWhenTheBodyChanges) {
  auto rendered = [](std::string_view body, std::string_view deployment = {}) {
    auto parsed = ParseRequest(Endpoint::kChatCompletions, body, deployment);
    auto& request = std::get<ParsedRequest>(parsed);
    EXPECT_TRUE(request.source.empty()) << body;
    return RenderUpstreamBody(request, "u");
  };
  // stream_options added or changed by the edge.
  EXPECT_EQ(rendered(R"({"model":"m", "stream":true,"messages":[]})"),
            R"({"model":"u","stream":true,"messages":[],"stream_options":{"include_usage":true}})");
  EXPECT_EQ(
      rendered(
          R"({"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[]})"),
      R"({"model":"u","stream":true,"stream_options":{"include_usage":true},"messages":[]})");
  // A repeated key, at the top or deeper: the tree (its last value) is what goes.
  EXPECT_EQ(rendered(R"({"model":"a","model":"b","messages":[]})"),
            R"({"model":"u","messages":[]})");
  EXPECT_EQ(rendered(R"({"model":"m","messages":[{"role":"user","role":"system"}]})"),
            R"({"model":"u","messages":[{"role":"system"}]})");
  // The model's key written with an escape, a byte-order mark, no model but the deployment's.
  EXPECT_EQ(rendered(R"({"mod\u0065l":"m","messages":[]})"), R"({"model":"u","messages":[]})");
  EXPECT_EQ(rendered("\xEF\xBB\xBF{\"model\":\"m\",\"messages\":[]}"),
            R"({"model":"u","messages":[]})");
  EXPECT_EQ(rendered(R"({"messages":[]})", "dep"), R"({"messages":[],"model":"u"})");
  // A budget the edge decided.
  auto budget = MustParse(Endpoint::kChatCompletions, R"({"model":"m", "messages":[]})");
  ASSERT_FALSE(budget.source.empty());
  ASSERT_FALSE(ApplyCompletionBudget(budget, {}, 64));
  EXPECT_EQ(RenderUpstreamBody(budget, "u"),
            R"({"model":"u","messages":[],"max_completion_tokens":64})");
  // Whatever changes the tree afterwards says so (the field policy, a previous response's id).
  auto later =
      MustParse(Endpoint::kChatCompletions, R"({"model":"m", "messages":[],"store":true})");
  later.body.erase("store");
  later.BodyChanged();
  EXPECT_EQ(RenderUpstreamBody(later, "u"), R"({"model":"u","messages":[]})");
}

// Exactly the same tree: the same types (signed, unsigned, float) and values everywhere.
void ExpectSameTree(const nlohmann::ordered_json& a, const nlohmann::ordered_json& b,
                    std::string_view text) {
  ASSERT_EQ(a.type(), b.type()) << text;
  ASSERT_EQ(a.dump(), b.dump()) << text;
  if (a.is_object()) {
    auto ib = b.begin();
    for (auto ia = a.begin(); ia != a.end(); ++ia, ++ib) {
      ASSERT_EQ(ia.key(), ib.key()) << text;
      ExpectSameTree(ia.value(), ib.value(), text);
    }
  } else if (a.is_array()) {
    for (size_t i = 0; i < a.size(); ++i) ExpectSameTree(a[i], b[i], text);
  } else if (a.is_number_float()) {
    ASSERT_EQ(std::signbit(a.get<double>()), std::signbit(b.get<double>())) << text;
  }
}

TEST(ParseJsonObject, BuildsTheTreeNlohmannBuildsAndRefusesWhatItRefuses) {
  const std::vector<std::string> texts = {
      R"({"a":1,"b":-1,"c":0,"d":-0,"e":0.0,"f":-0.0,"g":1e5,"h":1E-400,"i":-1e-400})",
      R"({"big":18446744073709551615,"bigger":18446744073709551616,"neg":-9223372036854775808})",
      R"({"negbig":-9223372036854775809,"max":9223372036854775807,"over":9223372036854775808})",
      R"({"inf":1e400,"pi":3.141592653589793238462643383279,"tiny":4.9e-324,"x":[-0,[-0.5]]})",
      R"({"s":"\u0000\u001f\"\\\/\b\f\n\r\t","e":"\ud83d\ude00","l":"\uD83D\uDE00","k":"é€😀"})",
      R"({"lone":"\ud800"})",
      R"({"low":"\udc00"})",
      R"({"bad":"\ud800\u0041"})",
      R"({"pair":"\ud800\udc00\udbff\udfff"})",
      R"({"hex":"\u12G4"})",
      R"({"short":"\u12"})",
      "{\"ctl\":\"a\x01b\"}",
      "{\"utf\":\"\xff\"}",
      "{\"utf\":\"\xed\xa0\x80\"}",
      "{\"over\":\"\xc0\xaf\"}",
      "\xEF\xBB\xBF{\"bom\":1}",
      R"({"dup":1,"dup":{"x":2},"y":3})",
      R"({"a":{"k":1,"k":2}})",
      R"({} {})",
      R"({}x)",
      "",
      "   ",
      R"([1])",
      R"("s")",
      R"({"a":})",
      R"({"a":01})",
      R"({"a":1.})",
      R"({"a":.5})",
      R"({"a":+1})",
      R"({"a":tru})",
      R"({"a":nul})",
      R"({"a":[1,]})",
      R"({"a":1,})",
      R"({'a':1})",
      R"({"a":1}   )",
      "\t{\n\"a\" :\r[ ]}\n",
      R"({"a":-})",
      R"({"a":-0.})",
      R"({"a":-01})",
      R"({"a":1e})",
      R"({"a":1e+})",
      R"({"a":"\x"})",
      R"({"":{"":[]}})",
      R"({"a":"unterminated)"};
  for (const auto& text : texts) {
    nlohmann::ordered_json fast;
    auto error = ParseJsonObject(text, fast);
    auto slow = nlohmann::ordered_json::parse(text, nullptr, false);
    const bool slow_ok = !slow.is_discarded() && slow.is_object();
    ASSERT_EQ(!error, slow_ok) << text;
    if (slow_ok) ExpectSameTree(fast, slow, text);
  }
}

TEST(ParseRequest, EstimatesThePromptFromTheWholeBodyAndReadsMaxTokens) {
  const std::string body = R"({"model":"m","max_tokens":50,"messages":[
                            {"role":"system","content":"12345678"},
                            {"role":"user","content":[{"type":"text","text":"1234"}]}]})";
  auto chat = MustParse(Endpoint::kChatCompletions, body);
  EXPECT_EQ(chat.prompt_estimate, static_cast<int64_t>((body.size() + 2) / 3));
  EXPECT_EQ(chat.max_tokens, 50);
  EXPECT_EQ(chat.choices, 1);
  auto newer = MustParse(Endpoint::kChatCompletions,
                         R"({"model":"m","max_completion_tokens":7,"messages":[]})");
  EXPECT_EQ(newer.max_tokens, 7);
  EXPECT_EQ(newer.max_tokens_param, "max_completion_tokens");
  // Both: the larger bounds what the upstream may generate.
  auto both = MustParse(Endpoint::kChatCompletions,
                        R"({"model":"m","max_tokens":9,"max_completion_tokens":7,"messages":[]})");
  EXPECT_EQ(both.max_tokens, 9);
  auto embed = MustParse(Endpoint::kEmbeddings, R"({"model":"m","input":["abcd","efgh"]})");
  EXPECT_GE(embed.prompt_estimate, 2);
  EXPECT_FALSE(embed.stream);
}

TEST(ParseRequest, EveryFieldCountsTowardsThePrompt) {
  // 40 KB of tool call arguments with a one-word message: the estimate covers the arguments.
  Json body = {{"model", "m"},
               {"max_tokens", 5},
               {"messages",
                {{{"role", "user"}, {"content", "hi"}},
                 {{"role", "assistant"},
                  {"content", nullptr},
                  {"tool_calls",
                   {{{"id", "call_1"},
                     {"type", "function"},
                     {"function", {{"name", "f"}, {"arguments", std::string(40000, 'x')}}}}}}},
                 {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "ok"}}}}};
  auto parsed = MustParse(Endpoint::kChatCompletions, body.dump());
  EXPECT_GE(parsed.prompt_estimate, 40000 / 4);  // what a provider counts for them, at least
  EXPECT_GE(parsed.prompt_estimate, static_cast<int64_t>(body.dump().size() / 3));
}

TEST(ParseRequest, InlineImagesCountPerImageNotPerByte) {
  Json body = {
      {"model", "m"},
      {"messages",
       {{{"role", "user"},
         {"content",
          {{{"type", "text"}, {"text", "what is this?"}},
           {{"type", "image_url"},
            {"image_url", {{"url", "data:image/png;base64," + std::string(300000, 'A')}}}},
           {{"type", "image_url"}, {"image_url", {{"url", "https://example.com/cat.png"}}}}}}}}}};
  auto parsed = MustParse(Endpoint::kChatCompletions, body.dump());
  EXPECT_GE(parsed.prompt_estimate, 2 * kImageTokens);
  EXPECT_LT(parsed.prompt_estimate, 2 * kImageTokens + 200);
}

TEST(ParseRequest, ValidatesMaxTokensAndChoices) {
  auto param = [](std::string_view body) {
    return MustFail(Endpoint::kChatCompletions, body).param;
  };
  EXPECT_EQ(param(R"({"model":"m","messages":[],"max_tokens":-5})"), "max_tokens");
  EXPECT_EQ(param(R"({"model":"m","messages":[],"max_tokens":0})"), "max_tokens");
  EXPECT_EQ(param(R"({"model":"m","messages":[],"max_tokens":1.5})"), "max_tokens");
  EXPECT_EQ(param(R"({"model":"m","messages":[],"max_tokens":"10"})"), "max_tokens");
  EXPECT_EQ(param(R"({"model":"m","messages":[],"max_completion_tokens":-1})"),
            "max_completion_tokens");
  EXPECT_EQ(param(R"({"model":"m","messages":[],"n":0})"), "n");
  EXPECT_EQ(param(R"({"model":"m","messages":[],"n":129})"), "n");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"model":"m","prompt":"x","best_of":21})").param,
            "best_of");
  EXPECT_EQ(MustParse(Endpoint::kChatCompletions, R"({"model":"m","messages":[],"n":4})").choices,
            4);
  EXPECT_EQ(
      MustParse(Endpoint::kCompletions, R"({"model":"m","prompt":"x","n":2,"best_of":5})").choices,
      5);
  // Null is absent.
  EXPECT_EQ(
      MustParse(Endpoint::kChatCompletions, R"({"model":"m","messages":[],"max_tokens":null})")
          .max_tokens,
      0);
}

TEST(CompletionBudget, ClientLimitModelLimitAndDefaults) {
  auto parse = [](std::string_view body) { return MustParse(Endpoint::kChatCompletions, body); };
  // The client's limit, within the model's.
  auto r = parse(R"({"model":"m","messages":[],"max_tokens":100,"n":4})");
  EXPECT_FALSE(ApplyCompletionBudget(r, {1000, 0}, 4096));
  EXPECT_EQ(r.max_tokens, 100);
  EXPECT_FALSE(r.send_max_tokens);
  EXPECT_EQ(WorstCaseCompletionTokens(r), 400);
  EXPECT_EQ(WorstCaseTokens(r), r.prompt_estimate + 400);
  // Above the model's limit: refused, naming the field the client used.
  r = parse(R"({"model":"m","messages":[],"max_completion_tokens":1001})");
  auto error = ApplyCompletionBudget(r, {1000, 0}, 4096);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->param, "max_completion_tokens");
  // Without a model limit the edge's ceiling applies; int64's largest value saturates, never
  // wraps.
  r = parse(R"({"model":"m","messages":[],"max_tokens":9223372036854775807})");
  EXPECT_TRUE(ApplyCompletionBudget(r, {}, 4096));
  r = parse(R"({"model":"m","messages":[],"max_tokens":18446744073709551615})");
  EXPECT_TRUE(ApplyCompletionBudget(r, {}, 4096));
  // Absent: the model's default, else the fallback (capped by the model's limit); sent upstream.
  r = parse(R"({"model":"m","messages":[]})");
  EXPECT_FALSE(ApplyCompletionBudget(r, {0, 512}, 4096));
  EXPECT_EQ(r.max_tokens, 512);
  EXPECT_TRUE(r.send_max_tokens);
  r = parse(R"({"model":"m","messages":[]})");
  EXPECT_FALSE(ApplyCompletionBudget(r, {2000, 0}, 4096));
  EXPECT_EQ(r.max_tokens, 2000);
  // Embeddings generate nothing.
  auto e = MustParse(Endpoint::kEmbeddings, R"({"model":"m","input":"x"})");
  EXPECT_FALSE(ApplyCompletionBudget(e, {}, 4096));
  EXPECT_EQ(WorstCaseCompletionTokens(e), 0);
}

TEST(CompletionBudget, SaturatesInsteadOfWrapping) {
  ParsedRequest r;
  r.prompt_estimate = std::numeric_limits<int64_t>::max() - 3;
  r.max_tokens = std::numeric_limits<int64_t>::max() / 2;
  r.choices = 128;
  EXPECT_EQ(WorstCaseCompletionTokens(r), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(WorstCaseTokens(r), std::numeric_limits<int64_t>::max());
}

TEST(RenderUpstreamBody, SendsTheBudgetTheEdgeDecidedInTheProvidersField) {
  auto r = MustParse(Endpoint::kChatCompletions, R"({"model":"m","messages":[]})");
  ASSERT_FALSE(ApplyCompletionBudget(r, {0, 300}, 4096));
  auto openai = Json::parse(RenderUpstreamBody(r, "u", ProviderKind::kOpenAi));
  EXPECT_EQ(openai["max_completion_tokens"], 300);
  EXPECT_FALSE(openai.contains("max_tokens"));
  // A later attempt on an OpenAI-compatible server gets max_tokens instead, not both.
  auto compatible = Json::parse(RenderUpstreamBody(r, "u", ProviderKind::kOpenAiCompatible));
  EXPECT_EQ(compatible["max_tokens"], 300);
  EXPECT_FALSE(compatible.contains("max_completion_tokens"));
  // The client's own limit is never touched.
  auto own = MustParse(Endpoint::kChatCompletions, R"({"model":"m","messages":[],"max_tokens":7})");
  ASSERT_FALSE(ApplyCompletionBudget(own, {0, 300}, 4096));
  auto sent = Json::parse(RenderUpstreamBody(own, "u", ProviderKind::kOpenAi));
  EXPECT_EQ(sent["max_tokens"], 7);
  EXPECT_FALSE(sent.contains("max_completion_tokens"));
  auto legacy = MustParse(Endpoint::kCompletions, R"({"model":"m","prompt":"x"})");
  ASSERT_FALSE(ApplyCompletionBudget(legacy, {}, 64));
  EXPECT_EQ(Json::parse(RenderUpstreamBody(legacy, "u", ProviderKind::kOpenAi))["max_tokens"], 64);
}

TEST(JsonDepth, DeepBodiesAreRefusedBeforeAnythingWalksThem) {
  auto nested = [](int depth, char open, char close) {
    return std::string(depth, open) + std::string(depth, close);
  };
  EXPECT_TRUE(JsonDepthWithin(nested(64, '[', ']'), 64));
  EXPECT_FALSE(JsonDepthWithin(nested(65, '[', ']'), 64));
  EXPECT_TRUE(JsonDepthWithin(R"({"a":"[[[[[[[[[[\"[[[[[["})", 2));  // brackets in strings
  EXPECT_FALSE(JsonDepthWithin(R"({"a":"\\","b":[[]]})", 2));        // an escaped backslash ends
  // The review's reproduction: 50,000 levels in a message's content, no key needed to send it.
  std::string attack = R"({"model":"x","messages":[{"content":)" + nested(50000, '[', ']') + "}]}";
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, attack).param, "");
  EXPECT_NE(MustFail(Endpoint::kChatCompletions, attack).message.find("64 levels"),
            std::string::npos);
  // And 300,000 levels in metadata, which only the serialiser walked.
  std::string metadata =
      R"({"model":"x","messages":[],"metadata":)" + nested(300000, '[', ']') + "}";
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, metadata).param, "");
  // The limit itself parses.
  std::string deep_ok = R"({"model":"x","messages":[],"metadata":)" + nested(62, '[', ']') + "}";
  MustParse(Endpoint::kChatCompletions, deep_ok);
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
  EXPECT_EQ(usage.cached_tokens, 0);
  EXPECT_FALSE(UsageFromBody("garbage", &chars).present);
  // The cached part of the prompt is read (and never more than the prompt).
  auto cached = UsageFromBody(
      R"({"choices":[],"usage":{"prompt_tokens":2048,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1024}}})",
      &chars);
  EXPECT_EQ(cached.cached_tokens, 1024);
  auto absurd = UsageFromBody(
      R"({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":99}}})",
      &chars);
  EXPECT_EQ(absurd.cached_tokens, 5);
  // Cache writes (the spec's cache_write_tokens) are the rest of the prompt at most.
  auto writes = UsageFromBody(
      R"({"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":60,"cache_write_tokens":30}}})",
      &chars);
  EXPECT_EQ(writes.cached_tokens, 60);
  EXPECT_EQ(writes.cache_write_tokens, 30);
  auto too_many = UsageFromBody(
      R"({"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":60,"cache_write_tokens":90}}})",
      &chars);
  EXPECT_EQ(too_many.cache_write_tokens, 40);
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
