// What the usage books read from an OpenAI-format answer (a chat or completions body, or one
// streamed chunk), in one pass over the text without building its tree: `usage`, `service_tier`
// and the characters the choices generated. The grammar is nlohmann's own (its SAX parser), so
// a text it would not parse is rejected here too, and where a key repeats the last one counts,
// as in the parsed object; the results equal what openai.cpp read from the parsed tree.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace simdjson::dom {
class element;
}

namespace tollgate::edge {

struct AnswerScan {
  // `usage`, when it is an object: its integers as the tree gave them (0: absent or not a
  // number); details_present: `prompt_tokens_details` is an object.
  bool usage_present = false;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  bool details_present = false;
  int64_t cached_tokens = 0;
  int64_t cache_write_tokens = 0;
  // `service_tier` when it is a non-empty string, bounded to 64 bytes.
  std::optional<std::string> service_tier;
  // `choices`: present, an array, its length, and the generated characters (UTF-8 code points)
  // of every choice's text, message or delta (content, reasoning_content, refusal, tool calls'
  // and function_call's name and arguments).
  bool choices_present = false;
  bool choices_array = false;
  int64_t choices_count = 0;
  int64_t choices_chars = 0;
};

// False when `text` is not one JSON object (`out` is then unspecified).
bool ScanAnswer(std::string_view text, AnswerScan& out);

// `text` parsed by this thread's simdjson DOM parser (one per thread, shared by the answer scan
// and the request parse, openai.cpp); `root` is valid until the thread's next parse. False when
// simdjson refuses the text or it is larger than 256 KiB (the parser's capacity stays bounded):
// the caller then decides with nlohmann's parser.
bool ParseDom(std::string_view text, simdjson::dom::element& root);

}  // namespace tollgate::edge
