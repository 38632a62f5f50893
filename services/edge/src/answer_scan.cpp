#include "src/answer_scan.h"

#include <simdjson.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "src/openai.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::json;

// The containers whose contents count; everything else is skipped (kOther).
enum class Role : uint8_t {
  kOther,
  kRoot,
  kChoices,    // root.choices (array)
  kChoice,     // one of them (object)
  kMessage,    // choice.message or choice.delta (object)
  kToolCalls,  // message.tool_calls (array)
  kToolCall,   // one of them (object)
  kFunction,   // tool_call.function or message.function_call (object)
  kUsage,      // root.usage (object)
  kDetails,    // usage.prompt_tokens_details (object)
};

enum class Kind : uint8_t { kNone, kText, kInt, kChild, kTier };

// Where a key's value goes in its object: a slot, read as text length, integer or a container.
struct Field {
  int8_t slot = -1;
  Kind kind = Kind::kNone;
  Role child = Role::kOther;
};

Field FieldOf(Role role, std::string_view key) {
  switch (role) {
    case Role::kRoot:
      if (key == "choices") return {0, Kind::kChild, Role::kChoices};
      if (key == "usage") return {1, Kind::kChild, Role::kUsage};
      if (key == "service_tier") return {2, Kind::kTier};
      break;
    case Role::kChoice:
      if (key == "text") return {0, Kind::kText};
      if (key == "message") return {1, Kind::kChild, Role::kMessage};
      if (key == "delta") return {2, Kind::kChild, Role::kMessage};
      break;
    case Role::kMessage:
      if (key == "content") return {0, Kind::kText};
      if (key == "reasoning_content") return {1, Kind::kText};
      if (key == "refusal") return {2, Kind::kText};
      if (key == "tool_calls") return {3, Kind::kChild, Role::kToolCalls};
      if (key == "function_call") return {4, Kind::kChild, Role::kFunction};
      break;
    case Role::kToolCall:
      if (key == "function") return {0, Kind::kChild, Role::kFunction};
      break;
    case Role::kFunction:
      if (key == "arguments") return {0, Kind::kText};
      if (key == "name") return {1, Kind::kText};
      break;
    case Role::kUsage:
      if (key == "prompt_tokens") return {0, Kind::kInt};
      if (key == "completion_tokens") return {1, Kind::kInt};
      if (key == "prompt_tokens_details") return {2, Kind::kChild, Role::kDetails};
      break;
    case Role::kDetails:
      if (key == "cached_tokens") return {0, Kind::kInt};
      if (key == "cache_write_tokens") return {1, Kind::kInt};
      break;
    default:
      break;
  }
  return {};
}

// Arrays: every element adds to slot 0.
Field ElementOf(Role role) {
  if (role == Role::kChoices) return {0, Kind::kChild, Role::kChoice};
  if (role == Role::kToolCalls) return {0, Kind::kChild, Role::kToolCall};
  return {};
}

bool IsArrayRole(Role role) { return role == Role::kChoices || role == Role::kToolCalls; }

struct Frame {
  Role role = Role::kOther;
  Field field;           // objects: the current key's
  int64_t slot[5] = {};  // objects: one value per known key (the last one wins); arrays: a sum
  int64_t count = 0;     // arrays: elements
  bool flag = false;     // kUsage: prompt_tokens_details was an object
  int64_t details[2] = {};
};

int64_t Sum(const Frame& f) {
  int64_t n = 0;
  for (int64_t v : f.slot) n += v;
  return n;
}

// nlohmann's SAX interface (sax_parse), non-virtual.
class Scanner {
 public:
  explicit Scanner(AnswerScan& out) : out_(out) {}
  bool root_object() const { return root_object_; }

  bool null() { return Scalar(Kind::kNone, 0, nullptr); }
  bool boolean(bool) { return Scalar(Kind::kNone, 0, nullptr); }
  bool number_integer(Json::number_integer_t v) { return Scalar(Kind::kInt, v, nullptr); }
  bool number_unsigned(Json::number_unsigned_t v) {
    return Scalar(Kind::kInt, static_cast<int64_t>(v), nullptr);
  }
  bool number_float(Json::number_float_t v, const Json::string_t&) {
    return Scalar(Kind::kInt, static_cast<int64_t>(v), nullptr);
  }
  bool string(Json::string_t& v) { return Scalar(Kind::kText, 0, &v); }
  bool binary(Json::binary_t&) { return Scalar(Kind::kNone, 0, nullptr); }
  bool start_object(std::size_t) { return Open(false); }
  bool start_array(std::size_t) { return Open(true); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }
  bool key(Json::string_t& k) {
    if (skip_ == 0 && !stack_.empty()) stack_.back().field = FieldOf(stack_.back().role, k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
    return false;
  }

 private:
  // The field the next value of the innermost counted container fills.
  Field Target() const {
    const Frame& f = stack_.back();
    return IsArrayRole(f.role) ? ElementOf(f.role) : f.field;
  }

  // Stores a value (a scalar or a closed container `child`) where the innermost frame wants it.
  void Store(Kind got, int64_t number, const std::string* text, const Frame* child) {
    if (stack_.empty()) return;
    Frame& f = stack_.back();
    const bool array = IsArrayRole(f.role);
    if (array) ++f.count;
    const Field d = Target();
    if (d.slot < 0) return;
    int64_t v = 0;
    switch (d.kind) {
      case Kind::kText:
        v = got == Kind::kText ? Utf8Length(*text) : 0;
        break;
      case Kind::kInt:
        v = got == Kind::kInt ? number : 0;
        break;
      case Kind::kChild:
        v = child != nullptr && child->role == d.child ? Sum(*child) : 0;
        break;
      case Kind::kTier:
        if (got == Kind::kText && !text->empty())
          out_.service_tier = text->substr(0, 64);
        else
          out_.service_tier.reset();
        return;
      case Kind::kNone:
        return;
    }
    if (f.role == Role::kRoot && d.child == Role::kUsage) {
      const bool usage = child != nullptr && child->role == Role::kUsage;
      out_.usage_present = usage;
      out_.prompt_tokens = usage ? child->slot[0] : 0;
      out_.completion_tokens = usage ? child->slot[1] : 0;
      out_.details_present = usage && child->flag;
      out_.cached_tokens = usage ? child->details[0] : 0;
      out_.cache_write_tokens = usage ? child->details[1] : 0;
      return;
    }
    if (f.role == Role::kRoot && d.child == Role::kChoices) {
      const bool choices = child != nullptr && child->role == Role::kChoices;
      out_.choices_present = true;
      out_.choices_array = choices;  // an array is always counted, never skipped
      out_.choices_count = choices ? child->count : 0;
      out_.choices_chars = v;
      return;
    }
    if (f.role == Role::kUsage && d.child == Role::kDetails) {
      const bool details = child != nullptr && child->role == Role::kDetails;
      f.flag = details;
      f.details[0] = details ? child->slot[0] : 0;
      f.details[1] = details ? child->slot[1] : 0;
      return;
    }
    if (array)
      f.slot[0] += v;
    else
      f.slot[d.slot] = v;
  }

  bool Scalar(Kind got, int64_t number, const std::string* text) {
    if (skip_ == 0) Store(got, number, text, nullptr);
    return true;
  }

  bool Open(bool array) {
    if (skip_ > 0) {
      ++skip_;
      return true;
    }
    if (stack_.empty()) {
      if (root_seen_ || array) {  // not an object: nothing counts
        root_seen_ = true;
        skip_ = 1;
        return true;
      }
      root_seen_ = root_object_ = true;
      stack_.push_back(Frame{Role::kRoot});
      return true;
    }
    const Field d = Target();
    const bool wants_array = IsArrayRole(d.child);
    if (d.kind == Kind::kChild && wants_array == array) {
      stack_.push_back(Frame{d.child});
    } else {
      skip_ = 1;  // a container nothing inside of counts; its value still replaces the field's
    }
    return true;
  }

  bool Close() {
    if (skip_ > 0) {
      if (--skip_ == 0) Store(Kind::kNone, 0, nullptr, nullptr);
      return true;
    }
    Frame child = stack_.back();
    stack_.pop_back();
    Store(Kind::kNone, 0, nullptr, &child);
    return true;
  }

  AnswerScan& out_;
  std::vector<Frame> stack_;
  int skip_ = 0;  // depth inside a skipped container
  bool root_seen_ = false;
  bool root_object_ = false;
};

// The fast path: simdjson's DOM (a tape, no allocation per value once the thread's parser has
// grown), read with the same rules: every field is visited in order, so a repeated key's last
// value is the one that counts. Texts it refuses (also some nlohmann takes: integers beyond 64
// bits, nesting beyond 1024, ...) go to the SAX path, which decides exactly as before.
namespace dom = simdjson::dom;

// Answers larger than this skip the fast path: each I/O thread's parser keeps its capacity.
constexpr size_t kFastPathMaxBytes = 256 * 1024;

int64_t TextLength(dom::element v) {
  std::string_view s;
  return v.get_string().get(s) == simdjson::SUCCESS ? Utf8Length(s) : 0;
}

int64_t Integer(dom::element v) {  // as nlohmann's get<int64_t>() of a number; 0 otherwise
  switch (v.type()) {
    case dom::element_type::INT64:
      return v.get_int64().value_unsafe();
    case dom::element_type::UINT64:
      return static_cast<int64_t>(v.get_uint64().value_unsafe());
    case dom::element_type::DOUBLE:
      return static_cast<int64_t>(v.get_double().value_unsafe());
    default:
      return 0;
  }
}

int64_t FunctionChars(dom::element v) {
  dom::object fn;
  if (v.get_object().get(fn) != simdjson::SUCCESS) return 0;
  int64_t arguments = 0, name = 0;
  for (auto field : fn) {
    if (field.key == "arguments") arguments = TextLength(field.value);
    if (field.key == "name") name = TextLength(field.value);
  }
  return arguments + name;
}

int64_t MessageChars(dom::element v) {
  dom::object message;
  if (v.get_object().get(message) != simdjson::SUCCESS) return 0;
  int64_t slot[5] = {};
  for (auto field : message) {
    const std::string_view k = field.key;
    if (k == "content") {
      slot[0] = TextLength(field.value);
    } else if (k == "reasoning_content") {
      slot[1] = TextLength(field.value);
    } else if (k == "refusal") {
      slot[2] = TextLength(field.value);
    } else if (k == "tool_calls") {
      slot[3] = 0;
      dom::array calls;
      if (field.value.get_array().get(calls) != simdjson::SUCCESS) continue;
      for (dom::element call : calls) {
        dom::object c;
        if (call.get_object().get(c) != simdjson::SUCCESS) continue;
        int64_t function = 0;
        for (auto f : c)
          if (f.key == "function") function = FunctionChars(f.value);
        slot[3] += function;
      }
    } else if (k == "function_call") {
      slot[4] = FunctionChars(field.value);
    }
  }
  return slot[0] + slot[1] + slot[2] + slot[3] + slot[4];
}

int64_t ChoiceChars(dom::element v) {
  dom::object choice;
  if (v.get_object().get(choice) != simdjson::SUCCESS) return 0;
  int64_t text = 0, message = 0, delta = 0;
  for (auto field : choice) {
    if (field.key == "text") text = TextLength(field.value);
    if (field.key == "message") message = MessageChars(field.value);
    if (field.key == "delta") delta = MessageChars(field.value);
  }
  return text + message + delta;
}

void ReadUsageObject(dom::element v, AnswerScan& out) {
  dom::object usage;
  out.usage_present = v.get_object().get(usage) == simdjson::SUCCESS;
  out.prompt_tokens = out.completion_tokens = out.cached_tokens = out.cache_write_tokens = 0;
  out.details_present = false;
  if (!out.usage_present) return;
  for (auto field : usage) {
    const std::string_view k = field.key;
    if (k == "prompt_tokens") {
      out.prompt_tokens = Integer(field.value);
    } else if (k == "completion_tokens") {
      out.completion_tokens = Integer(field.value);
    } else if (k == "prompt_tokens_details") {
      dom::object details;
      out.details_present = field.value.get_object().get(details) == simdjson::SUCCESS;
      out.cached_tokens = out.cache_write_tokens = 0;
      if (!out.details_present) continue;
      for (auto d : details) {
        if (d.key == "cached_tokens") out.cached_tokens = Integer(d.value);
        if (d.key == "cache_write_tokens") out.cache_write_tokens = Integer(d.value);
      }
    }
  }
}

// nullopt: simdjson refused the text (the SAX path decides).
std::optional<bool> FastScan(std::string_view text, AnswerScan& out) {
  dom::element root;
  if (!ParseDom(text, root)) return std::nullopt;
  dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) return false;
  for (auto field : object) {
    const std::string_view k = field.key;
    if (k == "choices") {
      dom::array choices;
      out.choices_present = true;
      out.choices_array = field.value.get_array().get(choices) == simdjson::SUCCESS;
      out.choices_count = 0;
      out.choices_chars = 0;
      if (!out.choices_array) continue;
      for (dom::element choice : choices) {
        ++out.choices_count;
        out.choices_chars += ChoiceChars(choice);
      }
    } else if (k == "usage") {
      ReadUsageObject(field.value, out);
    } else if (k == "service_tier") {
      std::string_view tier;
      if (field.value.get_string().get(tier) == simdjson::SUCCESS && !tier.empty())
        out.service_tier = std::string(tier.substr(0, 64));
      else
        out.service_tier.reset();
    }
  }
  return true;
}

}  // namespace

bool ParseDom(std::string_view text, dom::element& root) {
  if (text.size() > kFastPathMaxBytes) return false;
  thread_local dom::parser parser;
  return parser.parse(text.data(), text.size()).get(root) == simdjson::SUCCESS;
}

bool ScanAnswer(std::string_view text, AnswerScan& out) {
  if (auto fast = FastScan(text, out)) return *fast;
  out = AnswerScan{};
  Scanner scanner(out);
  if (!Json::sax_parse(text, &scanner)) return false;
  return scanner.root_object();
}

}  // namespace tollgate::edge
