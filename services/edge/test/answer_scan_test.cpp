// The one-pass answer scan (answer_scan.h) against the parsed-tree reading it replaced: the same
// usage, service tier, generated characters and usage-only decision for hand-picked answers and
// for thousands of generated ones (repeated keys, wrong types, deep nesting, invalid text).
#include "src/answer_scan.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "src/openai.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::json;

// The reference: what openai.cpp read from the parsed tree before the scan.
int64_t IntField(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_number()) return 0;
  return it->get<int64_t>();
}

int64_t StringLength(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_string()) return 0;
  return Utf8Length(it->get_ref<const std::string&>());
}

int64_t ChoiceChars(const Json& choice) {
  if (!choice.is_object()) return 0;
  int64_t n = StringLength(choice, "text");
  for (const char* part : {"message", "delta"}) {
    auto it = choice.find(part);
    if (it == choice.end() || !it->is_object()) continue;
    n += StringLength(*it, "content") + StringLength(*it, "reasoning_content") +
         StringLength(*it, "refusal");
    if (auto calls = it->find("tool_calls"); calls != it->end() && calls->is_array()) {
      for (const auto& call : *calls) {
        if (!call.is_object()) continue;
        if (auto fn = call.find("function"); fn != call.end() && fn->is_object())
          n += StringLength(*fn, "arguments") + StringLength(*fn, "name");
      }
    }
    if (auto fn = it->find("function_call"); fn != it->end() && fn->is_object())
      n += StringLength(*fn, "arguments") + StringLength(*fn, "name");
  }
  return n;
}

struct Reference {
  bool object = false;
  Usage usage;
  int64_t chars = 0;
  bool usage_only = false;
};

Reference Read(std::string_view text) {
  Reference r;
  auto json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return r;
  r.object = true;
  if (auto it = json.find("usage"); it != json.end() && it->is_object()) {
    const Json& u = *it;
    r.usage.present = true;
    r.usage.prompt_tokens = IntField(u, "prompt_tokens");
    r.usage.completion_tokens = IntField(u, "completion_tokens");
    if (auto d = u.find("prompt_tokens_details"); d != u.end() && d->is_object()) {
      r.usage.cached_tokens = std::clamp<int64_t>(IntField(*d, "cached_tokens"), 0,
                                                  std::max<int64_t>(0, r.usage.prompt_tokens));
      r.usage.cache_write_tokens =
          std::clamp<int64_t>(IntField(*d, "cache_write_tokens"), 0,
                              std::max<int64_t>(0, r.usage.prompt_tokens - r.usage.cached_tokens));
    }
    auto choices = json.find("choices");
    r.usage_only = choices == json.end() || (choices->is_array() && choices->empty());
  }
  auto tier = json.find("service_tier");
  if (tier != json.end() && tier->is_string() && !tier->get_ref<const std::string&>().empty())
    r.usage.service_tier = tier->get_ref<const std::string&>().substr(0, 64);
  if (auto it = json.find("choices"); it != json.end() && it->is_array())
    for (const auto& choice : *it) r.chars += ChoiceChars(choice);
  return r;
}

void ExpectSame(const std::string& text) {
  SCOPED_TRACE(text);
  const Reference want = Read(text);
  int64_t chars = -7;
  const Usage got = UsageFromBody(text, &chars);
  EXPECT_EQ(got.present, want.usage.present);
  EXPECT_EQ(got.prompt_tokens, want.usage.prompt_tokens);
  EXPECT_EQ(got.completion_tokens, want.usage.completion_tokens);
  EXPECT_EQ(got.cached_tokens, want.usage.cached_tokens);
  EXPECT_EQ(got.cache_write_tokens, want.usage.cache_write_tokens);
  EXPECT_EQ(got.service_tier, want.usage.service_tier);
  EXPECT_EQ(chars, want.object ? want.chars : -7);
  // The same text as one streamed chunk.
  StreamRelay relay(/*client_wants_usage=*/false);
  SseEvent event;
  event.data = text;
  event.has_data = true;
  const auto action = relay.OnEvent(event);
  if (text == "[DONE]") return;
  EXPECT_EQ(action, want.usage_only ? StreamRelay::Action::kDrop : StreamRelay::Action::kForward);
  EXPECT_EQ(relay.usage().present, want.usage.present);
  EXPECT_EQ(relay.usage().prompt_tokens, want.usage.prompt_tokens);
  EXPECT_EQ(relay.usage().cached_tokens, want.usage.cached_tokens);
  EXPECT_EQ(relay.usage().service_tier, want.usage.service_tier);
  EXPECT_EQ(relay.relayed_chars(), want.chars);
}

TEST(AnswerScan, ReadsWhatTheParsedTreeGave) {
  std::vector<std::string> texts = {
      R"({"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"héllo"}}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13},"service_tier":"default"})",
      R"({"choices":[{"message":{"content":"a","tool_calls":[{"function":{"name":"f","arguments":"{\"x\":1}"}},7,{"function":[]}],"function_call":{"name":"gg","arguments":"z"}},"text":"t"}]})",
      R"({"choices":[],"usage":{"prompt_tokens":2048,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1024,"cache_write_tokens":4000}}})",
      R"({"choices":{"0":{"text":"no"}},"usage":{"prompt_tokens":1.9,"completion_tokens":18446744073709551615}})",
      R"({"usage":{"prompt_tokens":1},"usage":5})",
      R"({"usage":5,"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":2},"prompt_tokens_details":null}})",
      R"({"service_tier":"flex","service_tier":""})",
      R"({"service_tier":"a","service_tier":["b"]})",
      R"({"choices":[{"delta":{"content":"x"},"delta":{"content":"yy"}}],"choices":[{"text":"zzz"}]})",
      R"({"choices":[{"message":{"content":"\u00e9\ud83d\ude00"}}]})",
      R"({"usage":{"prompt_tokens":-5,"prompt_tokens_details":{"cached_tokens":3}}})",
      R"({"a":{"choices":[{"text":"deep"}],"usage":{"prompt_tokens":1}},"b":[[[{"usage":1}]]]})",
      R"({"us\u0061ge":{"prompt_tokens":4},"choices":null})", R"([{"usage":{"prompt_tokens":1}}])",
      R"("usage")", R"(12)", R"({"usage":{"prompt_tokens":1}})",
      R"({"usage":{"prompt_tokens":1}} x)", R"({"usage":{"prompt_tokens":1})", "", "garbage",
      "[DONE]", R"({"choices":[{"text":"\xff"}]})", R"({"choices":[{"text":"a"}],})",
      // Texts the fast path leaves to the exact one (or must refuse as it does): escapes,
      // surrogates, bytes that are not UTF-8, huge numbers, a BOM, deep nesting, a large body.
      R"({"choices":[{"text":"\ud800"}]})", R"({"choices":[{"text":"\udc00x"}]})",
      R"({"choices":[{"text":"\ud83d\u0041"}]})", "{\"choices\":[{\"text\":\"\xff\"}]}",
      "{\"choices\":[{\"text\":\"a\tb\"}]}", R"({"service_tier":"a\u0000b"})",
      R"({"usage":{"prompt_tokens":123456789012345678901234567890,"completion_tokens":2}})",
      R"({"usage":{"prompt_tokens":1e400,"completion_tokens":-1e3}})",
      R"({"usage":{"prompt_tokens":-9223372036854775808,"completion_tokens":01}})",
      R"({"usage":{"prompt_tokens":-9223372036854775809,"completion_tokens":2.5e1}})",
      "\xEF\xBB\xBF{\"usage\":{\"prompt_tokens\":3}}", " \r\n\t{\"usage\":{}} \n"};
  texts.push_back(std::string(2000, '[') + std::string(2000, ']'));
  texts.push_back(R"({"choices":[{"text":"x"}],"deep":)" + std::string(1500, '[') +
                  std::string(1500, ']') + R"(,"usage":{"prompt_tokens":6}})");
  texts.push_back(R"({"usage":{"prompt_tokens":8},"choices":[{"text":")" +
                  std::string(300000, 'y') + R"("}]})");
  for (const auto& text : texts) ExpectSame(text);
}

// Random answers from the keys that count and some that do not, with repeats, every JSON type
// in every place, and now and then a broken text.
class Generator {
 public:
  explicit Generator(uint32_t seed) : rng_(seed) {}
  std::string Answer() {
    std::string s = Object(0);
    if (Pick(20) == 0 && !s.empty()) s.erase(Pick(static_cast<int>(s.size())), 1);
    return s;
  }

 private:
  int Pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
  std::string Value(int depth) {
    switch (Pick(depth > 5 ? 5 : 8)) {
      case 0:
        return "null";
      case 1:
        return Pick(2) ? "true" : "false";
      case 2: {
        static const char* numbers[] = {
            "0",    "7", "-3", "1.5", "1e3", "9223372036854775807", "18446744073709551615",
            "-0.5", "42"};
        return numbers[Pick(9)];
      }
      case 3:
      case 4: {
        static const char* strings[] = {
            R"("")",        R"("abc")", R"("héllo wörld")", R"("\u00e9\n\"q\"")",
            R"("default")", R"("x")"};
        return strings[Pick(6)];
      }
      case 5:
      case 6:
        return Object(depth + 1);
      default:
        return Array(depth + 1);
    }
  }
  std::string Object(int depth) {
    static const char* keys[] = {"choices",
                                 "usage",
                                 "service_tier",
                                 "text",
                                 "message",
                                 "delta",
                                 "content",
                                 "reasoning_content",
                                 "refusal",
                                 "tool_calls",
                                 "function",
                                 "function_call",
                                 "arguments",
                                 "name",
                                 "prompt_tokens",
                                 "completion_tokens",
                                 "cached_tokens",
                                 "cache_write_tokens",
                                 "prompt_tokens_details",
                                 "id",
                                 "object"};
    std::string s = "{";
    const int n = Pick(depth == 0 ? 6 : 4);
    for (int i = 0; i < n; ++i) {
      if (i) s += ',';
      s += '"';
      s += keys[Pick(21)];
      s += "\":";
      s += Value(depth);
    }
    return s + "}";
  }
  std::string Array(int depth) {
    std::string s = "[";
    const int n = Pick(4);
    for (int i = 0; i < n; ++i) {
      if (i) s += ',';
      s += Pick(2) ? Object(depth) : Value(depth);
    }
    return s + "]";
  }
  std::mt19937 rng_;
};

TEST(AnswerScan, GeneratedAnswersReadTheSameAsTheParsedTree) {
  Generator gen(1234);
  for (int i = 0; i < 20000; ++i) {
    ExpectSame(gen.Answer());
    if (::testing::Test::HasFailure()) break;
  }
}

}  // namespace
}  // namespace tollgate::edge
