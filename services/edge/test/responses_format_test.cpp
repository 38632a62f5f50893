// The Responses API's wire format (responses_format.h): sealed ids, usage, the typed stream.
#include "src/responses_format.h"

#include <gtest/gtest.h>

#include "src/openai.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::json;

const ResponseBinding kBinding{42, "7", "gpt-4o", "resp_abc123"};

TEST(ResponseIdSealer, OpensWhatItSealedAndNothingElse) {
  ResponseIdSealer sealer("0123456789abcdef-secret");
  auto id = sealer.Seal(kBinding);
  ASSERT_TRUE(id);
  EXPECT_TRUE(id->starts_with("resp_tg"));
  EXPECT_EQ(id->find_first_of("+/="), std::string::npos);  // safe in a URL path
  EXPECT_EQ(sealer.Seal(kBinding), id);                    // the same id every time
  auto opened = sealer.Open(*id);
  ASSERT_TRUE(opened);
  EXPECT_EQ(opened->upstream_key_id, 42);
  EXPECT_EQ(opened->user_id, "7");
  EXPECT_EQ(opened->model, "gpt-4o");
  EXPECT_EQ(opened->upstream_id, "resp_abc123");

  // Another secret (another deployment), any altered character, a truncation, the raw id.
  EXPECT_FALSE(ResponseIdSealer("another-secret-0123456").Open(*id));
  for (size_t i = 7; i < id->size(); ++i) {
    std::string altered = *id;
    altered[i] = altered[i] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(sealer.Open(altered)) << "position " << i;
  }
  EXPECT_FALSE(sealer.Open(id->substr(0, id->size() - 1)));
  EXPECT_FALSE(sealer.Open("resp_abc123"));
  EXPECT_FALSE(sealer.Open(""));
  EXPECT_FALSE(sealer.Open("resp_tg"));
  EXPECT_FALSE(sealer.Open(std::string(kMaxSealedResponseIdBytes + 1, 'a')));
}

TEST(ResponseIdSealer, DifferentOwnersGiveDifferentIds) {
  ResponseIdSealer sealer("0123456789abcdef-secret");
  ResponseBinding other_user = kBinding;
  other_user.user_id = "8";
  ResponseBinding other_key = kBinding;
  other_key.upstream_key_id = 43;
  EXPECT_NE(sealer.Seal(kBinding), sealer.Seal(other_user));
  EXPECT_NE(sealer.Seal(kBinding), sealer.Seal(other_key));
}

TEST(ResponseIdSealer, RefusesToSealOversizedFields) {
  ResponseIdSealer sealer("0123456789abcdef-secret");
  ResponseBinding b = kBinding;
  b.upstream_id = std::string(kMaxUpstreamResponseIdBytes + 1, 'x');
  EXPECT_FALSE(sealer.Seal(b));
  b.upstream_id = std::string(kMaxUpstreamResponseIdBytes, 'x');
  b.model = std::string(256, 'm');
  b.user_id = std::string(256, 'u');
  auto id = sealer.Seal(b);
  ASSERT_TRUE(id);
  EXPECT_LE(id->size(), kMaxSealedResponseIdBytes);  // the largest sealed id is still opened
  EXPECT_TRUE(sealer.Open(*id));
  b.upstream_id.clear();
  EXPECT_FALSE(sealer.Seal(b));
}

TEST(ResponseIdSecret, DerivedFromTheServiceTokenAndChecked) {
  EXPECT_EQ(DeriveResponseIdSecret("token-aaaaaaaaaaaaaaaa"),
            DeriveResponseIdSecret("token-aaaaaaaaaaaaaaaa"));
  EXPECT_NE(DeriveResponseIdSecret("token-aaaaaaaaaaaaaaaa"),
            DeriveResponseIdSecret("token-bbbbbbbbbbbbbbbb"));
  EXPECT_NE(DeriveResponseIdSecret("token-aaaaaaaaaaaaaaaa"), "token-aaaaaaaaaaaaaaaa");
  EXPECT_TRUE(ResponseIdSecretProblem("short"));
  EXPECT_FALSE(ResponseIdSecretProblem("sixteen-chars-ok"));
}

constexpr std::string_view kResponse = R"({
  "id":"resp_up1","object":"response","created_at":1,"status":"completed","model":"gpt-4o",
  "previous_response_id":"resp_up0","service_tier":"default",
  "output":[
    {"type":"message","id":"msg_1","status":"completed","role":"assistant",
     "content":[{"type":"output_text","text":"héllo","annotations":[]}]},
    {"type":"function_call","id":"fc_1","call_id":"call_1","name":"get","arguments":"{}"}],
  "usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":10},
           "output_tokens":20,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":50}})";

TEST(ResponsesUsage, FromTheResponseObject) {
  int64_t chars = 0;
  Usage u = ResponsesUsageFromBody(kResponse, &chars);
  EXPECT_TRUE(u.present);
  EXPECT_EQ(u.prompt_tokens, 30);
  EXPECT_EQ(u.completion_tokens, 20);  // reasoning tokens are inside output_tokens
  EXPECT_EQ(u.cached_tokens, 10);
  EXPECT_EQ(u.service_tier, "default");
  EXPECT_EQ(chars, 5 + 3 + 2);  // "héllo", "get", "{}"

  EXPECT_FALSE(ResponsesUsageFromBody(R"({"object":"response","output":[]})", nullptr).present);
  EXPECT_FALSE(ResponsesUsageFromBody("not json", &chars).present);
  EXPECT_EQ(chars, 0);
  // Cached never above input; negatives are nothing.
  u = ResponsesUsageFromBody(
      R"({"usage":{"input_tokens":3,"input_tokens_details":{"cached_tokens":9},"output_tokens":-1}})",
      nullptr);
  EXPECT_EQ(u.cached_tokens, 3);
  EXPECT_EQ(u.completion_tokens, 0);
}

SealResponseId Tagger() {
  return [](std::string_view id) { return "sealed:" + std::string(id); };
}

TEST(ResponsesBody, SealsTheResponseIdsAndNothingElse) {
  Json out = Json::parse(SealResponseBody(kResponse, Tagger()));
  EXPECT_EQ(out["id"], "sealed:resp_up1");
  EXPECT_EQ(out["previous_response_id"], "sealed:resp_up0");
  EXPECT_EQ(out["output"][0]["id"], "msg_1");  // item ids stay the upstream's
  // A deletion names the response too.
  out = Json::parse(
      SealResponseBody(R"({"id":"resp_up1","object":"response","deleted":true})", Tagger()));
  EXPECT_EQ(out["id"], "sealed:resp_up1");
  EXPECT_EQ(out["deleted"], true);
  // An input item list, an error: unchanged.
  std::string list = R"({"object":"list","data":[{"id":"msg_1"}],"first_id":"msg_1"})";
  EXPECT_EQ(SealResponseBody(list, Tagger()), list);
  EXPECT_EQ(SealResponseBody("oops", Tagger()), "oops");
  // A null previous_response_id stays null; a seal that cannot keeps the upstream's id.
  out = Json::parse(
      SealResponseBody(R"({"id":"resp_up1","object":"response","previous_response_id":null})",
                       [](std::string_view) { return std::string(); }));
  EXPECT_EQ(out["id"], "resp_up1");
  EXPECT_TRUE(out["previous_response_id"].is_null());
}

std::vector<SseEvent> Parse(std::string_view bytes) {
  SseParser parser;
  std::vector<SseEvent> events;
  parser.Feed(bytes, events);
  return events;
}

TEST(ResponsesStreamTest, SealsResponseEventsKeepsOthersAndReadsTheFinalUsage) {
  const std::string upstream =
      "event: response.created\n"
      "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_up1\",\"object\":"
      "\"response\",\"status\":\"in_progress\",\"usage\":null},\"sequence_number\":0}\n\n"
      "event: response.output_text.delta\n"
      "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,"
      "\"content_index\":0,\"delta\":\"hé\",\"sequence_number\":1}\n\n"
      "event: response.function_call_arguments.delta\n"
      "data: {\"type\":\"response.function_call_arguments.delta\",\"item_id\":\"fc_1\","
      "\"output_index\":1,\"delta\":\"{}\",\"sequence_number\":2}\n\n"
      "event: response.completed\n"
      "data: {\"type\":\"response.completed\",\"response\":" +
      Json::parse(kResponse).dump() + ",\"sequence_number\":3}\n\n";
  ResponsesStream stream(Tagger());
  auto events = Parse(upstream);
  ASSERT_EQ(events.size(), 4u);
  const std::string delta_raw = events[1].raw;
  for (auto& e : events) stream.OnEvent(e);

  EXPECT_TRUE(events[0].raw.starts_with("event: response.created\ndata: {"));
  EXPECT_TRUE(events[0].raw.ends_with("}\n\n"));
  Json created = Json::parse(events[0].data);
  EXPECT_EQ(created["response"]["id"], "sealed:resp_up1");
  EXPECT_EQ(created["sequence_number"], 0);
  EXPECT_EQ(events[1].raw, delta_raw);  // untouched, byte for byte
  Json completed = Json::parse(events[3].data);
  EXPECT_EQ(completed["response"]["id"], "sealed:resp_up1");
  EXPECT_EQ(completed["response"]["previous_response_id"], "sealed:resp_up0");
  EXPECT_EQ(Json::parse(Parse(events[3].raw).at(0).data), completed);  // raw matches data

  EXPECT_TRUE(stream.ended());
  EXPECT_TRUE(stream.usage().present);
  EXPECT_EQ(stream.usage().prompt_tokens, 30);
  EXPECT_EQ(stream.usage().completion_tokens, 20);
  EXPECT_EQ(stream.usage().cached_tokens, 10);
  EXPECT_EQ(stream.relayed_chars(), 4);  // "hé" + "{}"
  EXPECT_EQ(stream.last_sequence_number(), 3);
}

TEST(ResponsesStreamTest, WithoutAFinalEventThereIsNoUsage) {
  ResponsesStream stream(Tagger());
  auto events = Parse(
      "event: response.output_text.delta\n"
      "data: {\"type\":\"response.output_text.delta\",\"delta\":\"abcd\",\"sequence_number\":4}"
      "\n\n: keep-alive\n\n");
  for (auto& e : events) stream.OnEvent(e);
  EXPECT_FALSE(stream.ended());
  EXPECT_FALSE(stream.usage().present);
  EXPECT_EQ(stream.relayed_chars(), 4);
  std::string error = ResponsesErrorEvent("upstream_error", "broke off", 5);
  auto parsed = Parse(error);
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_TRUE(error.starts_with("event: error\n"));
  Json e = Json::parse(parsed[0].data);
  EXPECT_EQ(e["type"], "error");
  EXPECT_EQ(e["code"], "upstream_error");
  EXPECT_EQ(e["sequence_number"], 5);
  EXPECT_TRUE(e["param"].is_null());
}

// A background response: its create bills nothing (usage present and zero), and the response
// seen finished is billed once under an id that is the same at every sighting.
TEST(ResponsesBackground, TheCreateBillsNothingTheFinishedResponseIsBilledUnderItsOwnId) {
  const std::string queued =
      R"({"id":"resp_bg1","object":"response","status":"queued","background":true,)"
      R"("service_tier":"auto","output":[]})";
  int64_t chars = -1;
  Usage at_create = ResponsesUsageFromBody(queued, &chars);
  EXPECT_TRUE(at_create.present);
  EXPECT_EQ(at_create.prompt_tokens + at_create.completion_tokens, 0);
  EXPECT_EQ(at_create.service_tier, "auto");
  EXPECT_EQ(chars, 0);
  EXPECT_FALSE(FinishedBackgroundBody(queued));

  Json done = Json::parse(kResponse);
  done["id"] = "resp_bg1";
  done["background"] = true;
  auto finished = FinishedBackgroundBody(done.dump());
  ASSERT_TRUE(finished);
  EXPECT_EQ(finished->upstream_id, "resp_bg1");
  EXPECT_EQ(finished->usage.prompt_tokens, 30);
  EXPECT_EQ(finished->usage.completion_tokens, 20);
  EXPECT_EQ(finished->usage.cached_tokens, 10);
  // Even the whole body of a finished background response bills nothing as a create would.
  EXPECT_EQ(ResponsesUsageFromBody(done.dump(), nullptr).prompt_tokens, 0);
  for (const char* status : {"incomplete", "failed", "cancelled"}) {
    done["status"] = status;
    EXPECT_TRUE(FinishedBackgroundBody(done.dump())) << status;
  }
  for (const char* status : {"queued", "in_progress"}) {
    done["status"] = status;
    EXPECT_FALSE(FinishedBackgroundBody(done.dump())) << status;
  }
  done["status"] = "completed";
  done.erase("usage");
  EXPECT_FALSE(FinishedBackgroundBody(done.dump())) << "no usage: nothing to bill";
  done = Json::parse(kResponse);  // not background: its create billed it
  EXPECT_FALSE(FinishedBackgroundBody(done.dump()));

  const std::string id = BackgroundBillingId(42, "resp_bg1");
  EXPECT_EQ(id, BackgroundBillingId(42, "resp_bg1"));
  EXPECT_NE(id, BackgroundBillingId(43, "resp_bg1"));
  EXPECT_NE(id, BackgroundBillingId(42, "resp_bg2"));
  EXPECT_TRUE(id.starts_with("resp_bg_"));
  EXPECT_EQ(id.size(), 8u + 32u);
}

TEST(ResponsesBackground, AStreamOfABackgroundResponseBillsItApartAtItsEnd) {
  Json done = Json::parse(kResponse);
  done["id"] = "resp_bg2";
  done["background"] = true;
  const std::string upstream =
      "event: response.created\n"
      "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_bg2\",\"object\":"
      "\"response\",\"status\":\"queued\",\"background\":true},\"sequence_number\":0}\n\n"
      "event: response.output_text.delta\n"
      "data: {\"type\":\"response.output_text.delta\",\"delta\":\"abcd\",\"sequence_number\":1}"
      "\n\n";
  ResponsesStream stream(Tagger());
  auto events = Parse(upstream);
  for (auto& e : events) stream.OnEvent(e);
  EXPECT_TRUE(stream.background());
  EXPECT_TRUE(stream.usage().present) << "a client that leaves is not billed an estimate";
  EXPECT_EQ(stream.usage().prompt_tokens + stream.usage().completion_tokens, 0);
  EXPECT_FALSE(stream.finished_background());
  auto end = Parse(
      "event: response.completed\ndata: {\"type\":\"response.completed\","
      "\"response\":" +
      done.dump() + ",\"sequence_number\":2}\n\n");
  stream.OnEvent(end.at(0));
  EXPECT_EQ(Json::parse(end[0].data)["response"]["id"], "sealed:resp_bg2");
  ASSERT_TRUE(stream.finished_background());
  EXPECT_EQ(stream.finished_background()->upstream_id, "resp_bg2");
  EXPECT_EQ(stream.finished_background()->usage.completion_tokens, 20);
  EXPECT_EQ(stream.usage().completion_tokens, 0);

  // A streamed retrieve from starting_after sees no created event, only the end.
  ResponsesStream resumed(Tagger());
  auto tail = Parse(
      "event: response.completed\ndata: {\"type\":\"response.completed\","
      "\"response\":" +
      done.dump() + ",\"sequence_number\":9}\n\n");
  resumed.OnEvent(tail.at(0));
  ASSERT_TRUE(resumed.finished_background());
  EXPECT_EQ(resumed.finished_background()->usage.prompt_tokens, 30);
}

TEST(ResponsesRequest, ParsedWithMaxOutputTokensAndTheBudgetSentAsIt) {
  auto parsed = ParseRequest(Endpoint::kResponses,
                             R"({"model":"m","input":"hi","stream":true,"max_output_tokens":50})");
  auto& r = std::get<ParsedRequest>(parsed);
  EXPECT_TRUE(r.stream);
  EXPECT_EQ(r.max_tokens, 50);
  EXPECT_FALSE(r.body.contains("stream_options"));  // not a chat stream option here
  EXPECT_FALSE(ApplyCompletionBudget(r, {}, 4096));
  EXPECT_FALSE(r.send_max_tokens);

  parsed = ParseRequest(Endpoint::kResponses, R"({"model":"m","previous_response_id":"x"})");
  auto& p = std::get<ParsedRequest>(parsed);  // input may come from the previous response
  EXPECT_FALSE(ApplyCompletionBudget(p, {100, 0}, 4096));
  EXPECT_EQ(p.max_tokens, 100);
  Json body = Json::parse(RenderUpstreamBody(p, "up-m"));
  EXPECT_EQ(body["max_output_tokens"], 100);
  EXPECT_EQ(body["model"], "up-m");
  EXPECT_FALSE(body.contains("max_tokens"));
  EXPECT_EQ(WorstCaseCompletionTokens(p), 100);

  auto bad = ParseRequest(Endpoint::kResponses, R"({"model":"m","max_output_tokens":0})");
  ASSERT_TRUE(std::holds_alternative<RequestError>(bad));
  EXPECT_EQ(std::get<RequestError>(bad).param, "max_output_tokens");
  auto big = ParseRequest(Endpoint::kResponses, R"({"model":"m","max_output_tokens":500})");
  auto error = ApplyCompletionBudget(std::get<ParsedRequest>(big), {100, 0}, 4096);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->param, "max_output_tokens");
  EXPECT_TRUE(error->message.starts_with("max_output_tokens is too large"));
  EXPECT_EQ(UpstreamSuffix(ProviderKind::kOpenAi, Endpoint::kResponses, "d", ""), "/responses");
  EXPECT_EQ(UpstreamSuffix(ProviderKind::kAzureOpenAi, Endpoint::kResponses, "d", ""),
            "/openai/v1/responses");
}

}  // namespace
}  // namespace tollgate::edge
