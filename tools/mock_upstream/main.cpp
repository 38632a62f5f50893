// tollgate-mock-upstream: a fake OpenAI / Azure OpenAI provider for tests, the launcher and
// benchmarks. See README.md in this directory for the endpoints, knobs and control API.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include "mock_upstream.h"

namespace {

using tollgate::mock::Options;

constexpr std::string_view kUsage = R"(usage: tollgate-mock-upstream [flags]
  --listen=HOST:PORT        address to listen on (default 127.0.0.1:0; port 0 picks a free one)
  --port-file=PATH          also write the bound port to PATH
  --threads=N               threads running the io_context (default 2)
  --require-key=KEY         accept only these keys (repeatable; default: any non-empty key)
  --key-behavior=KEY:SPEC   per-key knobs, e.g. sk-a:status=429,retry_after=2 (repeatable)
  --models=A,B,...          ids listed by GET /v1/models
  --verbose                 log each request to stderr
 process-wide defaults of the per-request knobs:
  --ttfb-ms=MS --chunks=N --chunk-delay-ms=MS --size=WORDS --fail-status=STATUS
  --retry-after=S --error-code=CODE --reset-after-chunks=N --hang
)";

bool ParseInt(std::string_view text, int64_t lo, int64_t hi, int64_t* value) {
  try {
    size_t used = 0;
    long long v = std::stoll(std::string(text), &used);
    if (used != text.size() || v < lo || v > hi) return false;
    *value = v;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// Flags take "--name=value" or "--name value". Returns false with *error on a bad command line.
bool ParseCommandLine(int argc, char** argv, Options* options, std::string* error) {
  options->models = {"gpt-4o",
                     "gpt-4o-mini",
                     "gpt-4.1-mini",
                     "o3-mini",
                     "gpt-3.5-turbo-instruct",
                     "text-embedding-3-small",
                     "text-embedding-3-large",
                     "mock-model"};
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage.data(), stdout);
      std::exit(0);
    }
    if (!arg.starts_with("--")) {
      *error = "unexpected argument '" + std::string(arg) + "'";
      return false;
    }
    std::string_view name = arg.substr(2);
    std::string_view value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string_view::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "verbose" || (name == "hang" && !has_value)) {
      if (name == "verbose") options->verbose = true;
      if (name == "hang") options->defaults.hang = true;
      continue;
    }
    if (!has_value) {
      std::string probe_error;
      tollgate::mock::Behavior probe;
      const bool known = name == "listen" || name == "port-file" || name == "threads" ||
                         name == "require-key" || name == "key-behavior" ||
                         name == "key-behaviour" || name == "models" || name == "fail-status" ||
                         tollgate::mock::SetBehaviorField(&probe, name, "0", &probe_error);
      if (!known) {
        *error = "unknown flag --" + std::string(name);
        return false;
      }
      if (i + 1 >= argc) {
        *error = "--" + std::string(name) + " needs a value";
        return false;
      }
      value = argv[++i];
    }
    int64_t number = 0;
    if (name == "listen") {
      size_t colon = value.rfind(':');
      if (colon == std::string_view::npos ||
          !ParseInt(value.substr(colon + 1), 0, 65535, &number)) {
        *error = "--listen wants HOST:PORT";
        return false;
      }
      std::string_view host = value.substr(0, colon);
      if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      options->host = std::string(host);
      options->port = static_cast<uint16_t>(number);
    } else if (name == "port-file") {
      options->port_file = std::string(value);
    } else if (name == "threads") {
      if (!ParseInt(value, 1, 256, &number)) {
        *error = "--threads wants 1..256";
        return false;
      }
      options->threads = static_cast<int32_t>(number);
    } else if (name == "require-key") {
      options->require_keys.emplace_back(value);
    } else if (name == "key-behavior" || name == "key-behaviour") {
      size_t colon = value.rfind(':');
      if (colon == std::string_view::npos || colon == 0) {
        *error = "--key-behavior wants KEY:field=value,...";
        return false;
      }
      auto behavior = tollgate::mock::ParseBehaviorSpec(value.substr(colon + 1), error);
      if (!behavior) return false;
      options->key_behaviors.emplace_back(std::string(value.substr(0, colon)), *behavior);
    } else if (name == "models") {
      options->models.clear();
      for (std::string_view rest = value; !rest.empty();) {
        size_t comma = rest.find(',');
        if (comma != 0) options->models.emplace_back(rest.substr(0, comma));
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      }
    } else {
      // The knob defaults share their names and validation with the per-key spec.
      const std::string field = name == "fail-status" ? "status" : std::string(name);
      if (!tollgate::mock::SetBehaviorField(&options->defaults, field, value, error)) {
        if (error->starts_with("unknown")) *error = "unknown flag --" + std::string(name);
        return false;
      }
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  Options options;
  std::string error;
  if (!ParseCommandLine(argc, argv, &options, &error)) {
    std::fprintf(stderr, "tollgate-mock-upstream: %s\n%s", error.c_str(), kUsage.data());
    return 2;
  }
  return tollgate::mock::RunServer(options);
}
