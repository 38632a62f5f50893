// The field policy over parsed request bodies: stripped, refused and priced fields.
#include "src/field_policy.h"

#include <gtest/gtest.h>

#include "src/endpoint_kinds.h"
#include "src/openai.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::ordered_json;

Json Body(const char* text) { return Json::parse(text); }

std::vector<std::string> Keys(const Json& body) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : body.items()) keys.push_back(k);
  return keys;
}

TEST(FieldPolicyTest, DefaultsStripStoreAndKeepEverythingElseInOrder) {
  FieldPolicy policy;
  Json body =
      Body(R"({"model":"m","store":true,"messages":[],"metadata":{"a":"b"},"temperature":0.5})");
  FieldDecision d = policy.Apply(body);
  EXPECT_FALSE(d.refusal);
  EXPECT_EQ(d.service_tier, "");
  EXPECT_EQ(Keys(body), (std::vector<std::string>{"model", "messages", "metadata", "temperature"}));
  EXPECT_EQ(body["metadata"]["a"], "b");
  EXPECT_EQ(body.dump(), R"({"model":"m","messages":[],"metadata":{"a":"b"},"temperature":0.5})");
  EXPECT_TRUE(d.stripped);  // the body no longer says what the client sent
}

// The policy is per endpoint kind: /v1/responses keeps `store` (its upstream default is true, so
// stripping `store: false` would store the response), chat completions lose it.
TEST(FieldPolicyTest, TheResponsesApiKeepsStoreOtherKindsLoseIt) {
  FieldPolicy policy({{"store", "user"}, {}, {"auto", "default"}});
  Json chat = Body(R"({"model":"m","store":false,"user":"u","messages":[]})");
  EXPECT_FALSE(policy.Apply(chat, KindOf(Endpoint::kChatCompletions).kept_fields).refusal);
  EXPECT_EQ(chat.dump(), R"({"model":"m","messages":[]})");
  Json responses = Body(R"({"model":"m","store":false,"user":"u","input":"hi"})");
  EXPECT_FALSE(policy.Apply(responses, KindOf(Endpoint::kResponses).kept_fields).refusal);
  EXPECT_EQ(responses.dump(), R"({"model":"m","store":false,"input":"hi"})");
  // A kept field can still be refused.
  FieldPolicy refusing({{}, {"store"}, {"auto"}});
  Json refused = Body(R"({"model":"m","store":false,"input":"hi"})");
  auto d = refusing.Apply(refused, KindOf(Endpoint::kResponses).kept_fields);
  ASSERT_TRUE(d.refusal);
  EXPECT_EQ(d.refusal->param, "store");
}

TEST(FieldPolicyTest, ABodyWithoutThePolicysFieldsIsUntouched) {
  FieldPolicy policy({{"store", "logit_bias"}, {"user"}, {"auto", "default"}});
  const char* text = R"({"z":1,"model":"m","input":"hi","a":[1,2],"encoding_format":"float"})";
  Json body = Body(text);
  FieldDecision d = policy.Apply(body);
  EXPECT_FALSE(d.refusal);
  EXPECT_EQ(body.dump(), Body(text).dump()) << "same fields, same order, same values";
  EXPECT_FALSE(d.stripped);  // so the client's own bytes may go upstream
}

// What the edge does with the decision: a request whose body lost a field is rendered anew,
// one whose body is untouched goes upstream as the client's bytes (openai.h, ParsedRequest).
TEST(FieldPolicyTest, AStrippedFieldMakesTheEdgeRenderTheBody) {
  FieldPolicy policy;
  auto parsed =
      ParseRequest(Endpoint::kChatCompletions, R"({"model":"m", "store":true, "messages":[]})");
  auto& request = std::get<ParsedRequest>(parsed);
  FieldDecision d = policy.Apply(request.body, KindOf(request.endpoint).kept_fields);
  ASSERT_TRUE(d.stripped);
  if (d.stripped) request.BodyChanged();  // as completions.cpp's Admit does
  EXPECT_EQ(RenderUpstreamBody(request, "u"), R"({"model":"u","messages":[]})");
  const std::string untouched = R"({"model":"m", "messages":[]})";
  auto kept = ParseRequest(Endpoint::kChatCompletions, untouched);
  auto& same = std::get<ParsedRequest>(kept);
  EXPECT_FALSE(policy.Apply(same.body, KindOf(same.endpoint).kept_fields).stripped);
  EXPECT_EQ(RenderUpstreamBody(same, "m"), untouched);
}

TEST(FieldPolicyTest, ARefusedFieldIsA400NamingIt) {
  FieldPolicy policy({{}, {"user", "prediction"}, {"auto", "default"}});
  Json body = Body(R"({"model":"m","prediction":{"type":"content"},"user":"u"})");
  FieldDecision d = policy.Apply(body);
  ASSERT_TRUE(d.refusal);
  EXPECT_EQ(d.refusal->param, "user") << "the first refused field of the policy's list";
  EXPECT_NE(d.refusal->message.find("'user'"), std::string::npos) << d.refusal->message;
  // A null value is no value: OpenAI treats it as absent, so it is not refused.
  Json null_user = Body(R"({"model":"m","user":null})");
  EXPECT_FALSE(policy.Apply(null_user).refusal);
}

TEST(FieldPolicyTest, AllowedTiersPassAndAreReported) {
  FieldPolicy policy({{"store"}, {}, {"auto", "default", "priority"}});
  for (const char* tier : {"auto", "default", "priority"}) {
    Json body = Json{{"model", "m"}, {"service_tier", tier}, {"store", true}};
    FieldDecision d = policy.Apply(body);
    EXPECT_FALSE(d.refusal) << tier;
    EXPECT_EQ(d.service_tier, tier);
    EXPECT_EQ(body["service_tier"], tier) << "an allowed tier goes upstream as sent";
    EXPECT_FALSE(body.contains("store"));
  }
  Json none = Body(R"({"model":"m","service_tier":null})");
  FieldDecision d = policy.Apply(none);
  EXPECT_FALSE(d.refusal);
  EXPECT_EQ(d.service_tier, "");
}

TEST(FieldPolicyTest, ATierNotAllowedIsRefusedNamingTheAllowedOnes) {
  FieldPolicy policy;  // auto, default
  for (const char* tier : {"priority", "flex", "scale", "fast", "PRIORITY", ""}) {
    Json body = Json{{"model", "m"}, {"service_tier", tier}, {"store", true}};
    FieldDecision d = policy.Apply(body);
    ASSERT_TRUE(d.refusal) << tier;
    EXPECT_EQ(d.refusal->param, "service_tier");
    EXPECT_NE(d.refusal->message.find("'auto', 'default'"), std::string::npos)
        << d.refusal->message;
    EXPECT_TRUE(body.contains("store")) << "a refused request is not rewritten";
  }
  Json number = Body(R"({"model":"m","service_tier":1})");
  FieldDecision d = policy.Apply(number);
  ASSERT_TRUE(d.refusal);
  EXPECT_EQ(d.refusal->param, "service_tier");
  EXPECT_NE(d.refusal->message.find("expected a string"), std::string::npos);
  // No tier allowed at all: every value is refused, absence is fine.
  FieldPolicy none({{}, {}, {}});
  Json body = Body(R"({"model":"m","service_tier":"auto"})");
  ASSERT_TRUE(none.Apply(body).refusal);
  Json without = Body(R"({"model":"m"})");
  EXPECT_FALSE(none.Apply(without).refusal);
}

TEST(FieldPolicyTest, AStrippedServiceTierIsNotCheckedAndNotPriced) {
  FieldPolicy policy({{"service_tier"}, {}, {"auto"}});
  Json body = Body(R"({"model":"m","service_tier":"priority","n":1})");
  FieldDecision d = policy.Apply(body);
  EXPECT_FALSE(d.refusal);
  EXPECT_EQ(d.service_tier, "") << "the upstream never sees it: its default tier";
  EXPECT_EQ(body.dump(), R"({"model":"m","n":1})");
}

TEST(FieldPolicyTest, ARefusedServiceTierFieldWins) {
  FieldPolicy policy({{}, {"service_tier"}, {"auto", "default"}});
  Json body = Body(R"({"model":"m","service_tier":"auto"})");
  FieldDecision d = policy.Apply(body);
  ASSERT_TRUE(d.refusal);
  EXPECT_EQ(d.refusal->param, "service_tier");
}

TEST(FieldPolicyTest, CheckNamesTheKeyOfABadOption) {
  EXPECT_FALSE(FieldPolicy::Check({}));
  EXPECT_FALSE(FieldPolicy::Check({{"store", "metadata"}, {"user"}, {"auto", "flex"}}));
  auto both = FieldPolicy::Check({{"store", "user"}, {"user"}, {"auto"}});
  ASSERT_TRUE(both);
  EXPECT_NE(both->find("edge.strip_fields"), std::string::npos) << *both;
  EXPECT_NE(both->find("'user'"), std::string::npos) << *both;
  auto malformed = FieldPolicy::Check({{"store"}, {"bad name"}, {"auto"}});
  ASSERT_TRUE(malformed);
  EXPECT_NE(malformed->find("edge.reject_fields"), std::string::npos) << *malformed;
  auto tier = FieldPolicy::Check({{}, {}, {"auto", ""}});
  ASSERT_TRUE(tier);
  EXPECT_NE(tier->find("edge.allowed_service_tiers"), std::string::npos) << *tier;
  auto own = FieldPolicy::Check({{"stream_options"}, {}, {"auto"}});
  ASSERT_TRUE(own);
  EXPECT_NE(own->find("edge.strip_fields"), std::string::npos) << *own;
  EXPECT_FALSE(FieldPolicy::Check({{}, {"stream"}, {"auto"}})) << "refusing streams is allowed";
}

TEST(FieldPolicyTest, FieldNames) {
  EXPECT_TRUE(IsFieldName("store"));
  EXPECT_TRUE(IsFieldName("max_completion_tokens"));
  EXPECT_TRUE(IsFieldName("x-custom.1"));
  EXPECT_FALSE(IsFieldName(""));
  EXPECT_FALSE(IsFieldName("a b"));
  EXPECT_FALSE(IsFieldName("a,b"));
  EXPECT_FALSE(IsFieldName("\"store\""));
  EXPECT_FALSE(IsFieldName(std::string(65, 'a')));
}

// The tier billed is the one the upstream says served the request, in the body or in any chunk.
TEST(AnswerServiceTierTest, ReadFromTheBodyAndFromStreamedChunks) {
  Usage body = UsageFromBody(R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4},)"
                             R"("service_tier":"priority"})",
                             nullptr);
  EXPECT_EQ(body.service_tier, "priority");
  EXPECT_EQ(UsageFromBody(R"({"choices":[],"usage":{"prompt_tokens":3}})", nullptr).service_tier,
            "")
      << "absent: the caller keeps the tier asked for";
  EXPECT_EQ(UsageFromBody(R"({"service_tier":null})", nullptr).service_tier, "");

  StreamRelay relay(/*client_wants_usage=*/false);
  SseParser parser;
  std::vector<SseEvent> events;
  parser.Feed(
      "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"service_tier\":\"flex\"}\n\n"
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},"
      "\"service_tier\":\"default\"}\n\n"
      "data: [DONE]\n\n",
      events);
  ASSERT_EQ(events.size(), 3u);
  relay.OnEvent(events[0]);
  EXPECT_EQ(relay.usage().service_tier, "flex");
  EXPECT_EQ(relay.OnEvent(events[1]), StreamRelay::Action::kDrop);
  EXPECT_EQ(relay.usage().service_tier, "default") << "the last word wins";
  EXPECT_TRUE(relay.usage().present);
}

}  // namespace
}  // namespace tollgate::edge
