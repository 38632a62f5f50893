// tollgate-bench-load: the open-loop load generator of bench/run.sh (Debian has no wrk2).
//
//   --mode=rate   requests sent on a fixed schedule (--rate per second for --duration seconds),
//                 each timed from when it was due, not from when a connection was free, so a
//                 server that falls behind shows its queue in the percentiles. Connections are
//                 opened as needed up to --max-conns; past that a request waits for one (and
//                 that wait counts in its latency). --stream: also time the first body bytes
//                 (TTFB) and the gaps between the streamed events.
//   --mode=hold   opens --streams streaming requests (--open-rate per second), waits until each
//                 has its first event, then reads VmRSS of every --pid (before and while held)
//                 and exits, which closes them all. --url may be given more than once: stream i
//                 goes to URL i mod count (several edges in front of the same services), and
//                 each URL's established and failed streams are reported.
// Prints one JSON object on stdout. Bounded: every request has --timeout, the run --duration
// plus one --timeout of draining. Only 127.0.0.1 / localhost targets are accepted.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "stats.h"
#include "url.h"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using tollgate::bench::LocalUrl;
using tollgate::bench::OpenLoopSchedule;
using tollgate::bench::Summarize;
using tollgate::bench::ToJson;

namespace {

struct Options {
  std::string mode = "rate";
  std::string label;
  std::vector<std::string> urls;  // as given, for the report
  std::vector<LocalUrl> targets;  // parsed; rate mode takes exactly one
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  double rate = 100;
  double duration = 10;
  int max_conns = 1024;
  double timeout = 10;
  bool stream = false;
  int streams = 2000;
  double open_rate = 1000;
  std::vector<int> pids;
};

[[noreturn]] void Usage(const std::string& error) {
  std::cerr << "tollgate-bench-load: " << error
            << "\nusage: tollgate-bench-load --url=http://127.0.0.1:PORT/PATH [--mode=rate|hold]\n"
               "  [--header='Name: value']... [--body=JSON | --body-file=PATH] [--label=NAME]\n"
               "  rate: [--rate=N] [--duration=S] [--max-conns=N] [--timeout=S] [--stream]\n"
               "  hold: [--streams=N] [--open-rate=N] [--timeout=S] [--pid=PID]...\n"
               "        (--url repeatable in hold mode: streams spread round-robin)\n";
  std::exit(2);
}

std::string ExpandEnv(std::string s) {  // ${NAME} from the environment (the API key)
  for (size_t at; (at = s.find("${")) != std::string::npos;) {
    size_t end = s.find('}', at);
    if (end == std::string::npos) break;
    const char* v = std::getenv(s.substr(at + 2, end - at - 2).c_str());
    s.replace(at, end - at + 1, v ? v : "");
  }
  return s;
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--stream") {
      o.stream = true;
      continue;
    }
    size_t eq = arg.find('=');
    if (!arg.starts_with("--") || eq == std::string::npos) Usage("bad argument " + arg);
    std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    try {
      if (name == "url") {
        std::string error;
        auto url = tollgate::bench::ParseLocalUrl(value, &error);
        if (!url) Usage(error);
        o.urls.push_back(value);
        o.targets.push_back(std::move(*url));
      } else if (name == "mode") {
        if (value != "rate" && value != "hold") Usage("--mode is rate or hold");
        o.mode = value;
      } else if (name == "label") {
        o.label = value;
      } else if (name == "header") {
        size_t colon = value.find(':');
        if (colon == std::string::npos) Usage("--header wants 'Name: value'");
        std::string v = value.substr(colon + 1);
        while (!v.empty() && v.front() == ' ') v.erase(0, 1);
        o.headers.emplace_back(value.substr(0, colon), ExpandEnv(v));
      } else if (name == "body") {
        o.body = value;
      } else if (name == "body-file") {
        std::ifstream in(value);
        if (!in) Usage("cannot read " + value);
        std::stringstream ss;
        ss << in.rdbuf();
        o.body = ss.str();
      } else if (name == "rate") {
        o.rate = std::stod(value);
      } else if (name == "duration") {
        o.duration = std::stod(value);
      } else if (name == "max-conns") {
        o.max_conns = std::stoi(value);
      } else if (name == "timeout") {
        o.timeout = std::stod(value);
      } else if (name == "streams") {
        o.streams = std::stoi(value);
      } else if (name == "open-rate") {
        o.open_rate = std::stod(value);
      } else if (name == "pid") {
        o.pids.push_back(std::stoi(value));
      } else {
        Usage("unknown flag --" + name);
      }
    } catch (const std::logic_error&) {
      Usage("bad value for --" + name);
    }
  }
  if (o.targets.empty()) Usage("--url is required");
  if (o.mode == "rate" && o.targets.size() > 1) Usage("--mode=rate takes one --url");
  if (o.rate <= 0 || o.duration <= 0 || o.duration > 3600 || o.max_conns < 1 || o.timeout <= 0 ||
      o.streams < 1 || o.open_rate <= 0)
    Usage("rate, duration (<= 3600), max-conns, timeout, streams and open-rate must be positive");
  return o;
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

long RssKb(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("VmRSS:")) return std::atol(line.c_str() + 6);
  return -1;
}

struct Conn {
  explicit Conn(asio::any_io_executor ex) : stream(std::move(ex)) {}
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
};
using ConnPtr = std::unique_ptr<Conn>;

// Hold mode needs a descriptor per stream: the soft limit is raised to the hard one if short.
void EnsureFds(size_t needed) {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= needed) return;
  lim.rlim_cur = std::min<rlim_t>(lim.rlim_max, needed);
  setrlimit(RLIMIT_NOFILE, &lim);
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < needed)
    Usage("needs " + std::to_string(needed) + " file descriptors, the hard limit is " +
          std::to_string(lim.rlim_max) + " (ulimit -Hn)");
}

struct Run {
  // One URL: where it connects, what it sends, and (hold mode) how its streams fared.
  struct Target {
    tcp::endpoint endpoint;
    http::request<http::string_body> request;
    size_t established = 0, failed = 0;
  };
  Options options;
  asio::io_context io;
  std::vector<Target> targets;
  std::chrono::nanoseconds timeout{};

  // Connection pool (one thread: no locks).
  struct Waiter {
    explicit Waiter(asio::any_io_executor ex) : timer(std::move(ex)) {}
    asio::steady_timer timer;
    ConnPtr conn;
    bool granted = false;
  };
  std::vector<ConnPtr> idle;
  int open = 0;
  std::deque<Waiter*> waiters;

  // Results.
  size_t in_flight = 0, ok = 0, errors = 0, non_2xx = 0, io_errors = 0;
  std::vector<double> latency_ms, ttfb_ms, gap_ms;
  double max_send_lag_ms = 0;
  std::string first_error;

  explicit Run(Options o) : options(std::move(o)) {
    timeout = std::chrono::nanoseconds(static_cast<int64_t>(options.timeout * 1e9));
    tcp::resolver resolver(io);
    for (const LocalUrl& url : options.targets) {
      Target& t = targets.emplace_back();
      t.endpoint = *resolver.resolve(url.host, url.port).begin();
      t.request = {http::verb::post, url.target, 11};
      t.request.set(http::field::host, url.host + ":" + url.port);
      t.request.set(http::field::content_type, "application/json");
      for (auto& [k, v] : options.headers) t.request.set(k, v);
      t.request.body() = options.body;
      t.request.prepare_payload();
    }
  }

  void Error(const std::string& what) {
    ++errors;
    if (first_error.empty()) first_error = what;
  }

  awaitable<ConnPtr> Acquire() {
    if (!idle.empty()) {
      ConnPtr c = std::move(idle.back());
      idle.pop_back();
      co_return c;
    }
    if (open >= options.max_conns) {
      Waiter w(io.get_executor());
      w.timer.expires_at(Clock::time_point::max());
      waiters.push_back(&w);
      boost::system::error_code ec;
      co_await w.timer.async_wait(asio::redirect_error(use_awaitable, ec));
      if (w.conn) co_return std::move(w.conn);
      // Granted a free slot: connect a new one below (the slot is already counted).
    } else {
      ++open;
    }
    auto c = std::make_unique<Conn>(io.get_executor());
    c->stream.expires_after(timeout);
    boost::system::error_code ec;
    co_await c->stream.async_connect(targets[0].endpoint, asio::redirect_error(use_awaitable, ec));
    if (ec) {
      ++io_errors;
      Error("connect: " + ec.message());
      Release(nullptr);
      co_return nullptr;
    }
    c->stream.socket().set_option(tcp::no_delay(true));
    co_return c;
  }

  // A connection back to the pool (null: it was closed, its slot is free again).
  void Release(ConnPtr c) {
    if (!waiters.empty()) {
      Waiter* w = waiters.front();
      waiters.pop_front();
      w->conn = std::move(c);
      w->granted = true;
      w->timer.cancel();
      return;
    }
    if (c)
      idle.push_back(std::move(c));
    else
      --open;
  }

  awaitable<void> One(Clock::time_point due) {
    ConnPtr c = co_await Acquire();
    if (c) {
      boost::system::error_code ec;
      bool reusable = false;
      c->stream.expires_at(due + timeout);
      co_await http::async_write(c->stream, targets[0].request,
                                 asio::redirect_error(use_awaitable, ec));
      http::response_parser<http::string_body> parser;
      parser.body_limit(64u << 20);
      if (!ec)
        co_await http::async_read_header(c->stream, c->buffer, parser,
                                         asio::redirect_error(use_awaitable, ec));
      if (!ec && options.stream) {
        size_t seen = 0;
        Clock::time_point last{};
        while (!ec && !parser.is_done()) {
          co_await http::async_read_some(c->stream, c->buffer, parser,
                                         asio::redirect_error(use_awaitable, ec));
          const size_t size = parser.get().body().size();
          if (!ec && size > seen) {
            const auto now = Clock::now();
            if (seen == 0)
              ttfb_ms.push_back(Ms(now - due));
            else
              gap_ms.push_back(Ms(now - last));
            last = now;
            seen = size;
          }
        }
      } else if (!ec) {
        co_await http::async_read(c->stream, c->buffer, parser,
                                  asio::redirect_error(use_awaitable, ec));
      }
      const auto done = Clock::now();
      if (ec) {
        ++io_errors;
        Error(ec.message());
      } else if (parser.get().result_int() / 100 != 2) {
        ++non_2xx;
        Error("HTTP " + std::to_string(parser.get().result_int()) + ": " +
              parser.get().body().substr(0, 200));
      } else {
        ++ok;
        latency_ms.push_back(Ms(done - due));
        reusable = parser.get().keep_alive();
      }
      if (!reusable) {
        c->stream.socket().close(ec);
        c.reset();
      }
      Release(std::move(c));
    } else {
      // Acquire counted the failure.
    }
    --in_flight;
  }

  awaitable<void> RateLoop() {
    asio::steady_timer timer(io);
    OpenLoopSchedule schedule(options.rate, options.duration);
    const auto start = Clock::now() + std::chrono::milliseconds(20);
    for (size_t i = 0; i < schedule.count(); ++i) {
      const auto due = start + schedule.Offset(i);
      timer.expires_at(due);
      co_await timer.async_wait(use_awaitable);
      max_send_lag_ms = std::max(max_send_lag_ms, Ms(Clock::now() - due));
      ++in_flight;
      asio::co_spawn(io, One(due), asio::detached);
    }
    const auto deadline = Clock::now() + timeout + std::chrono::seconds(1);
    while (in_flight > 0 && Clock::now() < deadline) {
      timer.expires_after(std::chrono::milliseconds(5));
      co_await timer.async_wait(use_awaitable);
    }
    const double elapsed = Ms(Clock::now() - start) / 1000;
    std::printf(
        "{\"label\":\"%s\",\"mode\":\"rate\",\"target_rate\":%.1f,\"duration_s\":%.1f,"
        "\"sent\":%zu,\"ok\":%zu,\"errors\":%zu,\"non_2xx\":%zu,\"io_errors\":%zu,"
        "\"unfinished\":%zu,\"achieved_rps\":%.1f,\"max_conns_open\":%d,\"max_send_lag_ms\":%.3f,"
        "\"latency_ms\":%s",
        options.label.c_str(), options.rate, options.duration, schedule.count(), ok, errors,
        non_2xx, io_errors, in_flight, static_cast<double>(ok) / elapsed, open, max_send_lag_ms,
        ToJson(Summarize(latency_ms)).c_str());
    if (options.stream)
      std::printf(",\"ttfb_ms\":%s,\"chunk_gap_ms\":%s", ToJson(Summarize(ttfb_ms)).c_str(),
                  ToJson(Summarize(gap_ms)).c_str());
    std::printf(",\"first_error\":\"%s\"}\n", JsonEscape(first_error).c_str());
    std::fflush(stdout);
    std::_Exit(0);  // in-flight stragglers (past the drain) are counted as unfinished
  }

  // Hold mode: one long stream; `established` once its first event arrived.
  size_t established = 0, failed = 0;
  awaitable<void> HoldOne(Target& target) {
    auto c = std::make_unique<Conn>(io.get_executor());
    boost::system::error_code ec;
    c->stream.expires_after(timeout);
    co_await c->stream.async_connect(target.endpoint, asio::redirect_error(use_awaitable, ec));
    if (!ec)
      co_await http::async_write(c->stream, target.request,
                                 asio::redirect_error(use_awaitable, ec));
    http::response_parser<http::string_body> parser;
    if (!ec)
      co_await http::async_read_header(c->stream, c->buffer, parser,
                                       asio::redirect_error(use_awaitable, ec));
    if (!ec && parser.get().result_int() / 100 != 2) {
      ++failed;
      ++target.failed;
      co_await http::async_read(c->stream, c->buffer, parser,
                                asio::redirect_error(use_awaitable, ec));
      Error("HTTP " + std::to_string(parser.get().result_int()) + ": " +
            parser.get().body().substr(0, 200));
      co_return;
    }
    while (!ec && parser.get().body().empty() && !parser.is_done())
      co_await http::async_read_some(c->stream, c->buffer, parser,
                                     asio::redirect_error(use_awaitable, ec));
    if (ec || parser.is_done()) {
      ++failed;
      ++target.failed;
      Error(ec ? ec.message() : std::string("the stream ended before the measurement"));
      co_return;
    }
    ++established;
    ++target.established;
    c->stream.expires_never();
    while (!ec && !parser.is_done()) {  // keep reading (and discarding) until the exit
      parser.get().body().clear();
      co_await http::async_read_some(c->stream, c->buffer, parser,
                                     asio::redirect_error(use_awaitable, ec));
    }
  }

  awaitable<void> HoldLoop() {
    std::vector<long> before;
    for (int pid : options.pids) before.push_back(RssKb(pid));
    asio::steady_timer timer(io);
    const auto start = Clock::now();
    OpenLoopSchedule schedule(options.open_rate, options.streams / options.open_rate);
    for (size_t i = 0; i < schedule.count(); ++i) {
      timer.expires_at(start + schedule.Offset(i));
      co_await timer.async_wait(use_awaitable);
      asio::co_spawn(io, HoldOne(targets[i % targets.size()]), asio::detached);
    }
    const auto deadline = Clock::now() + timeout + std::chrono::seconds(1);
    while (established + failed < schedule.count() && Clock::now() < deadline) {
      timer.expires_after(std::chrono::milliseconds(20));
      co_await timer.async_wait(use_awaitable);
    }
    const double open_s = Ms(Clock::now() - start) / 1000;
    timer.expires_after(std::chrono::milliseconds(500));  // let allocations settle
    co_await timer.async_wait(use_awaitable);
    std::printf(
        "{\"label\":\"%s\",\"mode\":\"hold\",\"streams\":%zu,\"established\":%zu,"
        "\"failed\":%zu,\"open_s\":%.2f,\"processes\":[",
        options.label.c_str(), schedule.count(), established, failed, open_s);
    for (size_t i = 0; i < options.pids.size(); ++i) {
      const long held = RssKb(options.pids[i]);
      std::printf(
          "%s{\"pid\":%d,\"rss_before_kb\":%ld,\"rss_held_kb\":%ld,"
          "\"per_stream_kb\":%.2f}",
          i ? "," : "", options.pids[i], before[i], held,
          established ? static_cast<double>(held - before[i]) / established : 0.0);
    }
    std::printf("],\"targets\":[");
    for (size_t i = 0; i < targets.size(); ++i)
      std::printf("%s{\"url\":\"%s\",\"established\":%zu,\"failed\":%zu}", i ? "," : "",
                  JsonEscape(options.urls[i]).c_str(), targets[i].established, targets[i].failed);
    std::printf("],\"first_error\":\"%s\"}\n", JsonEscape(first_error).c_str());
    std::fflush(stdout);
    std::_Exit(0);  // closes every stream at once
  }

  static std::string JsonEscape(const std::string& s) {
    std::string out;
    for (char ch : s) {
      if (ch == '"' || ch == '\\') {
        out += '\\';
        out += ch;
      } else if (static_cast<unsigned char>(ch) < 0x20) {
        out += ' ';
      } else {
        out += ch;
      }
    }
    return out;
  }
};

}  // namespace

int main(int argc, char** argv) {
  Options options = Parse(argc, argv);
  // Hold mode: a socket per stream, plus a few (stdio, epoll, the /proc reads).
  if (options.mode == "hold") EnsureFds(static_cast<size_t>(options.streams) + 64);
  Run run(std::move(options));
  if (run.options.mode == "rate")
    asio::co_spawn(run.io, run.RateLoop(), asio::detached);
  else
    asio::co_spawn(run.io, run.HoldLoop(), asio::detached);
  run.io.run();
  return 0;
}
