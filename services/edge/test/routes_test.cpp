// The route table's matcher (literal segments, {name}, {name...}, "*", 404 vs 405) and the
// edge's own table.
#include "src/routes.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace tollgate::edge {
namespace {

// Handlers are only compared by address here; none runs.
boost::asio::awaitable<void> First(Exchange&) { co_return; }
boost::asio::awaitable<void> Second(Exchange&) { co_return; }

Route R(std::string method, std::string pattern, std::string label, RouteHandler h = First) {
  return Route{std::move(method), std::move(pattern), std::move(label), ErrorDialect::kOpenAi, h};
}

std::string Label(const RouteTable& table, std::string_view method, std::string_view path) {
  RouteMatch m = table.Match(method, path);
  return m.result == RouteMatch::Result::kFound ? m.route->label : "";
}

TEST(RouteTableTest, LiteralPathsMatchExactly) {
  RouteTable table({R("POST", "/v1/chat/completions", "chat"), R("GET", "/v1/models", "models")});
  EXPECT_EQ(Label(table, "POST", "/v1/chat/completions"), "chat");
  EXPECT_EQ(Label(table, "GET", "/v1/models"), "models");
  for (std::string_view path : {"/v1/models/", "/v1/model", "/v1/modelsx", "/v1//models",
                                "v1/models", "/V1/models", "/v1/models/x", "", "/"})
    EXPECT_EQ(table.Match("GET", path).result, RouteMatch::Result::kNotFound) << path;
  EXPECT_TRUE(table.Match("GET", "/v1/models").params.empty());
}

TEST(RouteTableTest, ASegmentParameterTakesOneNonEmptySegmentDecoded) {
  RouteTable table({R("POST", "/openai/deployments/{deployment}/chat/completions", "azure")});
  RouteMatch m = table.Match("POST", "/openai/deployments/gpt-4o%20mini/chat/completions");
  ASSERT_EQ(m.result, RouteMatch::Result::kFound);
  EXPECT_EQ(m.params.Get("deployment"), "gpt-4o mini");
  EXPECT_EQ(m.params.Get("other"), "");
  // An encoded slash stays inside its segment; a real one is a second segment.
  m = table.Match("POST", "/openai/deployments/a%2Fb/chat/completions");
  ASSERT_EQ(m.result, RouteMatch::Result::kFound);
  EXPECT_EQ(m.params.Get("deployment"), "a/b");
  EXPECT_EQ(table.Match("POST", "/openai/deployments/a/b/chat/completions").result,
            RouteMatch::Result::kNotFound);
  EXPECT_EQ(table.Match("POST", "/openai/deployments//chat/completions").result,
            RouteMatch::Result::kNotFound);
}

TEST(RouteTableTest, ATailTakesTheNonEmptyRestSlashesIncluded) {
  RouteTable table({R("GET", "/v1/models/{model...}", "model"), R("*", "/v1/{path...}", "any")});
  RouteMatch m = table.Match("GET", "/v1/models/org/with-slash");
  ASSERT_EQ(m.result, RouteMatch::Result::kFound);
  EXPECT_EQ(m.route->label, "model");
  EXPECT_EQ(m.params.Get("model"), "org/with-slash");
  EXPECT_EQ(table.Match("GET", "/v1/models/org%2Fwith-slash").params.Get("model"),
            "org/with-slash");
  EXPECT_EQ(table.Match("GET", "/v1/models//x").params.Get("model"), "/x");
  // "/v1/models/" has an empty tail: not the model route, but the catch-all's "models/".
  m = table.Match("GET", "/v1/models/");
  ASSERT_EQ(m.result, RouteMatch::Result::kFound);
  EXPECT_EQ(m.route->label, "any");
  EXPECT_EQ(m.params.Get("path"), "models/");
  EXPECT_EQ(table.Match("GET", "/v1/").result, RouteMatch::Result::kNotFound);
  EXPECT_EQ(table.Match("GET", "/v1").result, RouteMatch::Result::kNotFound);
  EXPECT_EQ(table.Match("GET", "/v2/models").result, RouteMatch::Result::kNotFound);
}

TEST(RouteTableTest, AStarRouteTakesEveryMethodAndTheFirstMatchWins) {
  RouteTable table({R("GET", "/v1/models", "list", First), R("*", "/v1/{path...}", "any", Second)});
  RouteMatch get = table.Match("GET", "/v1/models");
  ASSERT_EQ(get.result, RouteMatch::Result::kFound);
  EXPECT_EQ(get.route->handler, &First);
  for (std::string_view method : {"POST", "DELETE", "PATCH", "HEAD"}) {
    RouteMatch m = table.Match(method, "/v1/models");
    ASSERT_EQ(m.result, RouteMatch::Result::kFound) << method;
    EXPECT_EQ(m.route->handler, &Second);
    EXPECT_EQ(m.params.Get("path"), "models");
  }
}

TEST(RouteTableTest, AKnownPathUnderAnotherMethodIsMethodNotAllowed) {
  RouteTable table({R("POST", "/v1/chat/completions", "chat"), R("GET", "/v1/models", "list"),
                    R("DELETE", "/v1/models", "delete"), R("GET", "/v1/models", "again")});
  RouteMatch m = table.Match("GET", "/v1/chat/completions");
  EXPECT_EQ(m.result, RouteMatch::Result::kMethodNotAllowed);
  EXPECT_EQ(m.route, nullptr);
  EXPECT_EQ(m.allowed_methods, std::vector<std::string>{"POST"});
  m = table.Match("PUT", "/v1/models");
  EXPECT_EQ(m.result, RouteMatch::Result::kMethodNotAllowed);
  EXPECT_EQ(m.allowed_methods, (std::vector<std::string>{"GET", "DELETE"}));
  // Methods compare exactly, as HTTP's are case-sensitive.
  EXPECT_EQ(table.Match("post", "/v1/chat/completions").result,
            RouteMatch::Result::kMethodNotAllowed);
  EXPECT_EQ(table.Match("GET", "/v1/nothing").result, RouteMatch::Result::kNotFound);
  EXPECT_TRUE(table.Match("GET", "/v1/nothing").allowed_methods.empty());
}

TEST(RouteTableTest, MalformedRoutesFailWhenTheTableIsBuilt) {
  for (const Route& bad :
       {R("GET", "v1/models", "x"), R("GET", "", "x"), R("GET", "/v1//x", "x"),
        R("GET", "/v1/", "x"), R("GET", "/v1/{path...}/more", "x"), R("GET", "/v1/{}", "x"),
        R("GET", "/v1/{a", "x"), R("GET", "/v1/x{a}", "x"), R("GET", "/{a}/{a}", "x"),
        R("GET", "/v1/{a-b}", "x"), R("get", "/v1", "x"), R("", "/v1", "x"), R("GET", "/v1", ""),
        R("GET", "/v1", "x", nullptr)}) {
    EXPECT_THROW(RouteTable({bad}), std::invalid_argument) << bad.method << " " << bad.pattern;
  }
  EXPECT_NO_THROW(RouteTable({R("GET", "/", "root")}));
  EXPECT_EQ(Label(RouteTable({R("GET", "/", "root")}), "GET", "/"), "root");
}

// The edge's own table: every endpoint under its label, every other /v1 path the catch-all's,
// the rest 404, all OpenAI.
TEST(EdgeRoutesTest, EveryEndpointHasItsRouteAndLabel) {
  const RouteTable& table = EdgeRoutes();
  EXPECT_EQ(Label(table, "POST", "/v1/chat/completions"), "chat_completions");
  EXPECT_EQ(Label(table, "POST", "/v1/completions"), "completions");
  EXPECT_EQ(Label(table, "POST", "/v1/embeddings"), "embeddings");
  EXPECT_EQ(Label(table, "GET", "/v1/models"), "models");
  EXPECT_EQ(Label(table, "GET", "/v1/models/gpt-4o"), "model");
  EXPECT_EQ(table.Match("GET", "/v1/models/org%2Fm").params.Get("model"), "org/m");
  EXPECT_EQ(Label(table, "GET", "/v1/usage"), "usage");
  for (std::string_view prefix : {"", "/v1"}) {
    std::string p(prefix);
    EXPECT_EQ(Label(table, "GET", p + "/dashboard/billing/subscription"), "billing_subscription");
    EXPECT_EQ(Label(table, "GET", p + "/dashboard/billing/usage"), "billing_usage");
  }
  // Every other /v1 path and method is the catch-all's (the last route; the only one whose body
  // is streamed); outside /v1 nothing else matches.
  for (auto [method, path] :
       std::vector<std::pair<std::string, std::string>>{{"GET", "/v1/chat/completions"},
                                                        {"POST", "/v1/models"},
                                                        {"GET", "/v1/models/"},
                                                        {"POST", "/v1/files"},
                                                        {"DELETE", "/v1/files/file-1"},
                                                        {"GET", "/v1/files/file-1/content"}}) {
    EXPECT_EQ(Label(table, method, path), "passthrough") << method << " " << path;
  }
  EXPECT_EQ(&table.routes().back(), table.Match("PATCH", "/v1/x/y").route);
  // Uploads stream their bodies: the catch-all's and audio's (upload.h); every other route's body
  // is read whole (edge.max_body_bytes).
  for (const Route& route : table.routes())
    EXPECT_EQ(route.streams_body, route.label == "passthrough" ||
                                      route.label == "audio_transcriptions" ||
                                      route.label == "audio_translations")
        << route.pattern;
  EXPECT_EQ(table.Match("GET", "/nothing").result, RouteMatch::Result::kNotFound);
  EXPECT_EQ(table.Match("GET", "/v1").result, RouteMatch::Result::kNotFound);
  EXPECT_EQ(table.Match("GET", "/nothing").dialect, ErrorDialect::kOpenAi);
  // Anthropic's Messages API answers in Anthropic's format; another method on its paths is
  // Anthropic's 405, not the catch-all's.
  EXPECT_EQ(Label(table, "POST", "/v1/messages"), "messages");
  EXPECT_EQ(Label(table, "POST", "/v1/messages/count_tokens"), "count_tokens");
  EXPECT_EQ(table.Match("POST", "/v1/messages").dialect, ErrorDialect::kAnthropic);
  EXPECT_EQ(Label(table, "GET", "/v1/messages"), "unknown");
  EXPECT_EQ(Label(table, "DELETE", "/v1/messages/count_tokens"), "unknown");
  EXPECT_EQ(table.Match("GET", "/v1/messages").dialect, ErrorDialect::kAnthropic);
  // Anthropic's other Messages paths (batches) are Anthropic's 404, never the catch-all's.
  EXPECT_EQ(Label(table, "POST", "/v1/messages/batches"), "unknown");
  EXPECT_EQ(table.Match("GET", "/v1/messages/batches/b1").dialect, ErrorDialect::kAnthropic);
  EXPECT_EQ(Label(table, "POST", "/v1/messagesx"), "passthrough");
  for (const Route& route : table.routes()) {
    ErrorDialect expected = route.pattern.starts_with("/v1/messages") ? ErrorDialect::kAnthropic
                            : route.pattern.starts_with("/openai/")   ? ErrorDialect::kAzure
                                                                      : ErrorDialect::kOpenAi;
    EXPECT_EQ(route.dialect, expected) << route.pattern;
    // The dialect of a route's own paths is the one its prefix says (the server's own errors,
    // answered before any route, go by the prefix).
    EXPECT_EQ(DialectOfPath(route.pattern), expected) << route.pattern;
  }
}

TEST(EdgeRoutesTest, APathsPrefixSaysItsDialect) {
  EXPECT_EQ(DialectOfPath("/v1/messages"), ErrorDialect::kAnthropic);
  EXPECT_EQ(DialectOfPath("/v1/messages/count_tokens"), ErrorDialect::kAnthropic);
  EXPECT_EQ(DialectOfPath("/v1/messages/batches/x"), ErrorDialect::kAnthropic);
  EXPECT_EQ(DialectOfPath("/v1/messagesx"), ErrorDialect::kOpenAi);
  EXPECT_EQ(DialectOfPath("/openai/deployments/d/chat/completions"), ErrorDialect::kAzure);
  EXPECT_EQ(DialectOfPath("/openai"), ErrorDialect::kOpenAi);
  EXPECT_EQ(DialectOfPath("/v1/chat/completions"), ErrorDialect::kOpenAi);
  EXPECT_EQ(DialectOfPath(""), ErrorDialect::kOpenAi);
}

TEST(EdgeRoutesTest, AzureRoutesTakeTheDeploymentAndAnswerInAzuresFormat) {
  const RouteTable& table = EdgeRoutes();
  const std::string base = "/openai/deployments/";
  EXPECT_EQ(Label(table, "POST", base + "gpt-4o/chat/completions"), "azure_chat_completions");
  EXPECT_EQ(Label(table, "POST", base + "gpt-4o/completions"), "azure_completions");
  EXPECT_EQ(Label(table, "POST", base + "gpt-4o/embeddings"), "azure_embeddings");
  RouteMatch match = table.Match("POST", base + "my%20dep/chat/completions");
  EXPECT_EQ(match.params.Get("deployment"), "my dep");
  EXPECT_EQ(match.dialect, ErrorDialect::kAzure);
  RouteMatch get = table.Match("GET", base + "d/chat/completions");
  EXPECT_EQ(get.result, RouteMatch::Result::kMethodNotAllowed);
  EXPECT_EQ(get.dialect, ErrorDialect::kAzure);
  EXPECT_EQ(table.Match("POST", base + "/chat/completions").result, RouteMatch::Result::kNotFound);
}

}  // namespace
}  // namespace tollgate::edge
