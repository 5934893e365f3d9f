// TextLogSink and JsonLogSink under hostile conditions: a closed reader
// (SIGPIPE), a non-blocking descriptor, and adversarial bytes in every field.
#include <gtest/gtest.h>

#ifndef _WIN32
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "../reliability/reliability_support.hpp"  // is_valid_utf8, written apart from the library
#include "core/utf8.hpp"
#include "modkit/modkit.hpp"

namespace {

using namespace modkit;
using modkit::testing::is_valid_utf8;

LogRecord sample() {
  LogRecord record;
  record.module = "billing";
  record.instance_id = "0190a1b2-c3d4-7e5f-8a6b-1234567890ab";
  record.stream = LogStream::Stdout;
  record.level = LogLevel::Warn;
  record.line = "disk almost full";
  record.timestamp = std::chrono::system_clock::time_point(std::chrono::milliseconds(1700000000123LL));
  return record;
}

std::string sanitized(std::string_view text) {
  std::string scratch;
  return std::string(utf8::sanitize(text, scratch));
}

void append_utf8(std::string& out, std::uint32_t code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

// ---------------------------------------------------------------------------
// A strict parser for the one JSON shape JsonLogSink writes: an object of
// string and boolean members (RFC 8259 grammar for those; anything else, such
// as a raw control byte, a bad escape, a lone surrogate or invalid UTF-8, is
// rejected). It also rejects what the sink promises never to write raw: DEL,
// C1 controls and U+2028/U+2029.
// ---------------------------------------------------------------------------
class StrictJson {
 public:
  struct Member {
    std::string key;
    std::string value;  // decoded string, or "true"/"false"
    bool is_string = true;
  };

  static std::optional<std::vector<Member>> parse_object(std::string_view text, std::string* why) {
    StrictJson parser(text);
    std::vector<Member> members;
    if (!parser.object(members)) {
      if (why != nullptr) *why = parser.why_ + " at byte " + std::to_string(parser.pos_);
      return std::nullopt;
    }
    return members;
  }

 private:
  explicit StrictJson(std::string_view text) : text_(text) {}

  bool fail(const char* why) {
    why_ = why;
    return false;
  }
  bool at_end() const { return pos_ >= text_.size(); }
  unsigned char peek() const { return static_cast<unsigned char>(text_[pos_]); }

  bool object(std::vector<Member>& members) {
    if (at_end() || text_[pos_] != '{') return fail("no object");
    ++pos_;
    for (;;) {
      Member member;
      if (!string(member.key)) return false;
      if (at_end() || text_[pos_] != ':') return fail("no colon");
      ++pos_;
      if (!at_end() && text_[pos_] == '"') {
        if (!string(member.value)) return false;
      } else if (text_.substr(pos_, 4) == "true") {
        member.value = "true", member.is_string = false, pos_ += 4;
      } else if (text_.substr(pos_, 5) == "false") {
        member.value = "false", member.is_string = false, pos_ += 5;
      } else {
        return fail("unexpected value");
      }
      members.push_back(member);
      if (at_end()) return fail("unterminated object");
      if (text_[pos_] == '}') {
        ++pos_;
        return at_end() ? true : fail("trailing bytes");
      }
      if (text_[pos_] != ',') return fail("no comma");
      ++pos_;
    }
  }

  bool hex4(std::uint32_t& value) {
    if (text_.size() - pos_ < 4) return fail("short \\u");
    value = 0;
    for (int k = 0; k < 4; ++k) {
      char c = text_[pos_++];
      int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (digit < 0) return fail("bad hex digit");
      value = value * 16 + static_cast<std::uint32_t>(digit);
    }
    return true;
  }

  // One UTF-8 sequence, decoded strictly (Unicode table 3-7).
  bool utf8_char(std::uint32_t& code) {
    unsigned char b0 = peek();
    std::size_t need;
    std::uint32_t min;
    if (b0 < 0x80) {
      code = b0, need = 0, min = 0;
    } else if (b0 >= 0xC0 && b0 < 0xE0) {
      code = b0 & 0x1F, need = 1, min = 0x80;
    } else if (b0 >= 0xE0 && b0 < 0xF0) {
      code = b0 & 0x0F, need = 2, min = 0x800;
    } else if (b0 >= 0xF0 && b0 < 0xF8) {
      code = b0 & 0x07, need = 3, min = 0x10000;
    } else {
      return fail("bad UTF-8 lead byte");
    }
    ++pos_;
    for (std::size_t k = 0; k < need; ++k) {
      if (at_end() || (peek() & 0xC0) != 0x80) return fail("truncated UTF-8");
      code = (code << 6) | (peek() & 0x3F);
      ++pos_;
    }
    if (code < min) return fail("overlong UTF-8");
    if (code >= 0xD800 && code <= 0xDFFF) return fail("UTF-8 surrogate");
    if (code > 0x10FFFF) return fail("UTF-8 beyond U+10FFFF");
    return true;
  }

  bool string(std::string& out) {
    if (at_end() || text_[pos_] != '"') return fail("no string");
    ++pos_;
    for (;;) {
      if (at_end()) return fail("unterminated string");
      unsigned char c = peek();
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c < 0x20) return fail("raw control character");
      if (c != '\\') {
        std::uint32_t code;
        if (!utf8_char(code)) return false;
        if (code == 0x7F || (code >= 0x80 && code <= 0x9F)) return fail("raw DEL or C1 control");
        if (code == 0x2028 || code == 0x2029) return fail("raw U+2028/U+2029");
        append_utf8(out, code);
        continue;
      }
      ++pos_;
      if (at_end()) return fail("bad escape");
      char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t code;
          if (!hex4(code)) return false;
          if (code >= 0xDC00 && code <= 0xDFFF) return fail("lone low surrogate");
          if (code >= 0xD800 && code <= 0xDBFF) {
            std::uint32_t low;
            if (text_.substr(pos_, 2) != "\\u") return fail("lone high surrogate");
            pos_ += 2;
            if (!hex4(low)) return false;
            if (low < 0xDC00 || low > 0xDFFF) return fail("bad low surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, code);
          break;
        }
        default:
          return fail("bad escape");
      }
    }
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  std::string why_;
};

// Decodes the TextLogSink escapes: \\, \n, \r and \u{hh} (hh only for a
// character the sink must escape). nullopt for anything else after a
// backslash, so a forged or non-canonical escape is caught.
std::optional<std::string> unescape_text(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out += text[i];
      continue;
    }
    if (++i == text.size()) return std::nullopt;
    if (text[i] == '\\') {
      out += '\\';
    } else if (text[i] == 'n') {
      out += '\n';
    } else if (text[i] == 'r') {
      out += '\r';
    } else if (text.substr(i, 2) == "u{" && i + 4 < text.size() && text[i + 4] == '}') {
      unsigned code = 0;
      for (std::size_t k = i + 2; k < i + 4; ++k) {
        char c = text[k];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
        code = code * 16 + static_cast<unsigned>(c <= '9' ? c - '0' : c - 'a' + 10);
      }
      bool must = (code < 0x20 && code != '\t' && code != '\n' && code != '\r') || (code >= 0x7F && code <= 0x9F);
      if (!must) return std::nullopt;
      append_utf8(out, code);
      i += 4;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

// What a terminal must never see raw in a text line: C0 but TAB, DEL, C1.
bool has_raw_control(std::string_view text) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    if ((c < 0x20 && c != '\t') || c == 0x7F) return true;
    if (c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) <= 0x9F) return true;
  }
  return false;
}

// Every byte value, every pair of bytes, truncated and overlong sequences,
// surrogates, code points past U+10FFFF, the line separators, and random
// strings, placed at several offsets so the sinks' word-at-a-time scan meets
// them on and across 8-byte boundaries.
// Every pair only with `all_pairs` (the line), to keep the test quick.
std::vector<std::string> adversarial_inputs(bool all_pairs) {
  std::vector<std::string> inputs;
  for (int b = 0; b < 256; ++b) inputs.push_back(std::string(1, static_cast<char>(b)));
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      if (all_pairs || (a ^ b) % 5 == 0) {
        inputs.push_back(std::string{static_cast<char>(a), static_cast<char>(b)});
      }
    }
  }
  const char* const kCurated[] = {
      "\xC3", "\xE2\x82", "\xF0\x9F\x98", "\xE2\x80", "\xE2\x80x", "\xF0\x9F\x98x",     // truncated
      "\xC0\xAF", "\xC1\xBF", "\xE0\x80\xAF", "\xE0\x9F\xBF", "\xF0\x80\x80\xAF",       // overlong
      "\xF0\x8F\xBF\xBF", "\xED\xA0\x80", "\xED\xBF\xBF", "\xED\xA0\xBD\xED\xB8\x80",  // surrogates (CESU)
      "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\xF8\x88\x80\x80\x80", "\xFC\x84\x80\x80\x80\x80",
      "\xFE\xFF", "\x80\x80\x80", "\xBF",                                                // stray bytes
      "\xE2\x80\xA8", "\xE2\x80\xA9", "\xC2\x85", "\xC2\x9B[2J", "\xC2\x80", "\xC2\x9F",  // separators, C1
      "\xEF\xBB\xBF", "\xEF\xBF\xBD", "\xF4\x8F\xBF\xBF", "\xF0\x9F\x98\x80",            // valid edges
      "\\", "\\\\", "\\n", "\\u{1b}", "\\u0000", "\"", "\\\"", "\x1b]0;title\x07",        // forgery attempts
  };
  std::vector<std::string> curated(std::begin(kCurated), std::end(kCurated));
  curated.push_back(std::string("\0", 1));
  for (const auto& text : curated) {
    for (std::size_t at = 0; at < 18; ++at) {
      std::string padded(at, 'a');
      padded += text;
      padded += std::string(9, 'z');
      inputs.push_back(padded);
      inputs.push_back(std::string(at, 'a') + text);
    }
  }
  std::mt19937 random(12345);
  const unsigned char kBiased[] = {0x00, 0x09, 0x0A, 0x0D, 0x1B, 0x22, 0x5C, 0x7F, 0x80, 0x85, 0x9B, 0xA8,
                                   0xA9, 0xBF, 0xC0, 0xC2, 0xC3, 0xE0, 0xE2, 0xED, 0xF0, 0xF4, 0xF5, 0xFF};
  for (int n = 0; n < 4000; ++n) {
    std::string text(random() % 48, 'x');
    for (auto& c : text) {
      unsigned pick = random() % 4;
      c = static_cast<char>(pick == 0 ? kBiased[random() % sizeof kBiased] : pick == 1 ? random() % 256 : 'a' + random() % 26);
    }
    inputs.push_back(text);
  }
  return inputs;
}

template <typename SinkType>
std::string through_file(const std::vector<LogRecord>& records) {
  std::FILE* file = std::tmpfile();
  EXPECT_NE(file, nullptr);
  if (file == nullptr) return {};
  {
    SinkType sink(file);
    for (const auto& record : records) sink.write(record);
  }
  std::rewind(file);
  std::string out;
  char buffer[65536];
  std::size_t count;
  while ((count = std::fread(buffer, 1, sizeof buffer, file)) > 0) out.append(buffer, count);
  std::fclose(file);
  return out;
}

std::vector<std::string_view> split_lines(std::string_view out) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  for (std::size_t nl; (nl = out.find('\n', start)) != std::string_view::npos; start = nl + 1) {
    lines.push_back(out.substr(start, nl - start));
  }
  if (start != out.size()) lines.push_back(out.substr(start));  // unterminated tail: a failure
  return lines;
}

enum class Field { Module, InstanceId, Line };

LogRecord with_field(Field field, std::string_view text) {
  LogRecord record = sample();
  if (field == Field::Module) record.module = text;
  if (field == Field::InstanceId) record.instance_id = text;
  if (field == Field::Line) record.line = text;
  return record;
}

TEST(JsonLogSinkSafety, EveryAdversarialInputGivesValidJsonThatDecodesToTheRepairedText) {
  for (Field field : {Field::Module, Field::InstanceId, Field::Line}) {
    const std::vector<std::string> inputs = adversarial_inputs(field == Field::Line);
    std::vector<LogRecord> records;
    for (const auto& input : inputs) records.push_back(with_field(field, input));
    std::string out = through_file<JsonLogSink>(records);
    std::vector<std::string_view> lines = split_lines(out);
    ASSERT_EQ(lines.size(), inputs.size());
    ASSERT_EQ(out.back(), '\n');
    const char* const kKeys[] = {"timestamp", "level", "module", "instance_id", "stream", "continuation", "line"};
    const std::size_t kFieldIndex = field == Field::Module ? 2 : field == Field::InstanceId ? 3 : 6;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      std::string why;
      auto members = StrictJson::parse_object(lines[i], &why);
      ASSERT_TRUE(members.has_value()) << "input #" << i << ": " << why << "\n" << lines[i];
      ASSERT_EQ(members->size(), 7u);
      for (std::size_t k = 0; k < 7; ++k) ASSERT_EQ((*members)[k].key, kKeys[k]);
      ASSERT_EQ((*members)[kFieldIndex].value, sanitized(inputs[i])) << "input #" << i;
    }
    EXPECT_TRUE(is_valid_utf8(out));
  }
}

TEST(TextLogSinkSafety, EveryAdversarialInputGivesOneSafeLineThatDecodesToTheRepairedText) {
  const std::string head = "2023-11-14T22:13:20.123Z WARN  ";
  for (Field field : {Field::Module, Field::InstanceId, Field::Line}) {
    const std::vector<std::string> inputs = adversarial_inputs(field == Field::Line);
    std::vector<LogRecord> records;
    for (const auto& input : inputs) records.push_back(with_field(field, input));
    std::string out = through_file<TextLogSink>(records);
    ASSERT_TRUE(is_valid_utf8(out));  // has_raw_control below assumes it
    std::vector<std::string_view> lines = split_lines(out);
    ASSERT_EQ(lines.size(), inputs.size());  // one record, one line
    ASSERT_EQ(out.back(), '\n');
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      std::string_view line = lines[i];
      ASSERT_FALSE(has_raw_control(line)) << "input #" << i;
      if (field == Field::InstanceId && inputs[i].empty()) continue;  // no brackets at all
      // Cut the field out between the parts that are known.
      std::string_view before, after;
      if (field == Field::Module) {
        before = head, after = "[567890ab] stdout: disk almost full";
      } else if (field == Field::InstanceId) {
        before = "2023-11-14T22:13:20.123Z WARN  billing[", after = "] stdout: disk almost full";
      } else {
        before = "2023-11-14T22:13:20.123Z WARN  billing[567890ab] stdout: ", after = "";
      }
      ASSERT_EQ(line.substr(0, before.size()), before) << "input #" << i;
      ASSERT_GE(line.size(), before.size() + after.size());
      ASSERT_EQ(line.substr(line.size() - after.size()), after) << "input #" << i;
      std::string_view escaped = line.substr(before.size(), line.size() - before.size() - after.size());
      std::optional<std::string> decoded = unescape_text(escaped);
      ASSERT_TRUE(decoded.has_value()) << "input #" << i << ": " << line;
      // Only the last 8 bytes of an instance id are shown.
      if (field == Field::InstanceId && inputs[i].size() > 8) continue;
      ASSERT_EQ(*decoded, sanitized(inputs[i])) << "input #" << i;
    }
  }
}

#ifndef _WIN32

// ---------------------------------------------------------------------------
// SIGPIPE: each scenario runs in a forked child whose SIGPIPE is SIG_DFL, as
// in a host that never touched it; the child reports through its exit code.
// ---------------------------------------------------------------------------

// Runs `body` in a child process and returns its wait status, or -1 if it
// had not ended within 20 s (it is then killed).
int run_in_child(const std::function<int()>& body) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    std::signal(SIGPIPE, SIG_DFL);
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_UNBLOCK, &pipe_set, nullptr);
    _exit(body());
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int status = 0;
  for (;;) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return status;
    if (done < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

std::string describe(int status) {
  if (status == -1) return "did not finish in time";
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  return "status " + std::to_string(status);
}

bool sigpipe_blocked() {
  sigset_t mask;
  pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  return sigismember(&mask, SIGPIPE) == 1;
}

bool sigpipe_pending() {
  sigset_t pending;
  sigpending(&pending);
  return sigismember(&pending, SIGPIPE) == 1;
}

// A pipe whose reader is already gone; returns the write end.
int broken_pipe() {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  close(fds[0]);
  return fds[1];
}

enum class Form { TextFd, JsonFd, TextFile, JsonFile };

// Writes a few records through a sink of `form` to a broken pipe; the host
// first leaves text buffered in the FILE, whose flush hits the pipe too.
void write_to_broken_pipe(Form form) {
  int fd = broken_pipe();
  std::FILE* file = nullptr;
  if (form == Form::TextFile || form == Form::JsonFile) {
    file = fdopen(fd, "w");
    if (file == nullptr) _exit(90);
    std::fputs("buffered by the host\n", file);
  }
  LogRecord record = sample();
  std::string big(200000, 'x');  // several pipe buffers' worth
  for (int i = 0; i < 3; ++i) {
    record.line = i == 1 ? std::string_view(big) : std::string_view("disk almost full");
    switch (form) {
      case Form::TextFd: TextLogSink(fd).write(record); break;
      case Form::JsonFd: JsonLogSink(fd).write(record); break;
      case Form::TextFile: TextLogSink(file).write(record); break;
      case Form::JsonFile: JsonLogSink(file).write(record); break;
    }
  }
  if (file != nullptr) {
    std::fclose(file);
  } else {
    close(fd);
  }
}

class SigpipeTest : public ::testing::TestWithParam<Form> {};

TEST_P(SigpipeTest, ClosedReaderDoesNotKillAHostWithTheDefaultDisposition) {
  Form form = GetParam();
  int status = run_in_child([form] {
    write_to_broken_pipe(form);
    if (sigpipe_pending()) return 2;  // would kill the host once unblocked
    if (sigpipe_blocked()) return 3;  // mask not restored
    return 0;
  });
  EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe(status);
}

TEST_P(SigpipeTest, ClosedReaderCallsNoSigpipeHandler) {
  Form form = GetParam();
  int status = run_in_child([form] {
    static volatile sig_atomic_t calls = 0;
    std::signal(SIGPIPE, [](int) { calls = calls + 1; });
    write_to_broken_pipe(form);
    return calls == 0 ? 0 : 4;
  });
  EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe(status);
}

TEST_P(SigpipeTest, ThreadThatBlocksSigpipeKeepsItsMaskAndGetsNoStrayPendingSignal) {
  // As on modkit's own threads, which block every signal.
  Form form = GetParam();
  int status = run_in_child([form] {
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, nullptr);
    write_to_broken_pipe(form);
    if (!sigpipe_blocked()) return 5;
    if (sigpipe_pending()) return 6;  // the sink's own SIGPIPE was left behind
    return 0;
  });
  EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe(status);
}

TEST_P(SigpipeTest, SigpipePendingBeforeTheWriteIsNotConsumed) {
  // Someone else's SIGPIPE, pending while blocked, belongs to the host.
  Form form = GetParam();
  int status = run_in_child([form] {
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, nullptr);
    raise(SIGPIPE);
    if (!sigpipe_pending()) return 7;
    write_to_broken_pipe(form);
    if (!sigpipe_pending()) return 8;
    return 0;
  });
  EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe(status);
}

std::string form_name(const ::testing::TestParamInfo<Form>& param) {
  static const char* const kNames[] = {"TextFd", "JsonFd", "TextFile", "JsonFile"};
  return kNames[static_cast<int>(param.param)];
}

INSTANTIATE_TEST_SUITE_P(AllForms, SigpipeTest,
                         ::testing::Values(Form::TextFd, Form::JsonFd, Form::TextFile, Form::JsonFile), form_name);

// ---------------------------------------------------------------------------
// Non-blocking descriptors: a slow reader must get every record, whole and in
// order, however large.
// ---------------------------------------------------------------------------

// Reads `fd` to EOF, slowly: small reads with pauses, so the pipe stays full.
std::thread slow_reader(int fd, std::string& out) {
  return std::thread([fd, &out] {
    char buffer[4096];
    for (int reads = 0;; ++reads) {
      ssize_t count = read(fd, buffer, sizeof buffer);
      if (count < 0 && errno == EINTR) continue;
      if (count <= 0) break;
      out.append(buffer, static_cast<std::size_t>(count));
      if (reads % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  });
}

// The line of record `i` of writer `writer`: "w<writer>#<i>:" then filler up
// to a size that varies, every 250th record 100 KiB (far over PIPE_BUF).
std::string record_line(int writer, int i) {
  std::string line = "w" + std::to_string(writer) + "#" + std::to_string(i) + ":";
  std::size_t size = i % 250 == 0 ? 100 * 1024 : static_cast<std::size_t>(i % 61) * 37;
  line.append(size, static_cast<char>('a' + (i + writer) % 26));
  return line;
}

// The "line" field of one output line of either sink.
std::optional<std::string> line_field(std::string_view out_line, bool json) {
  if (json) {
    auto members = StrictJson::parse_object(out_line, nullptr);
    if (!members || members->size() != 7) return std::nullopt;
    return (*members)[6].value;
  }
  std::size_t at = out_line.find(" stdout: ");
  if (at == std::string_view::npos) return std::nullopt;
  return std::string(out_line.substr(at + 9));
}

// Writes `per_writer` records from each of `writers` threads through a sink
// on the non-blocking write end of a pipe (as a FILE* if `as_file`), then
// checks that every record arrived whole and each writer's in order.
template <typename SinkType>
void check_nonblocking(int writers, int per_writer, bool as_file) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_EQ(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK), 0);
  std::FILE* file = nullptr;
  if (as_file) {
    file = fdopen(fds[1], "w");
    ASSERT_NE(file, nullptr);
    std::fputs("host line first\n", file);  // left in stdio's buffer
  }
  std::string out;
  std::thread reader = slow_reader(fds[0], out);
  {
    auto sink = as_file ? std::make_unique<SinkType>(file) : std::make_unique<SinkType>(fds[1]);
    std::vector<std::thread> threads;
    for (int w = 0; w < writers; ++w) {
      threads.emplace_back([&sink, w, per_writer] {
        for (int i = 0; i < per_writer; ++i) {
          std::string line = record_line(w, i);
          LogRecord record = sample();
          record.line = line;
          sink->write(record);
        }
      });
    }
    for (auto& thread : threads) thread.join();
  }
  if (file != nullptr) {
    std::fclose(file);
  } else {
    close(fds[1]);
  }
  reader.join();
  close(fds[0]);

  std::vector<std::string_view> lines = split_lines(out);
  std::size_t first = 0;
  if (as_file) {
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines[0], "host line first");
    first = 1;
  }
  ASSERT_EQ(lines.size() - first, static_cast<std::size_t>(writers) * static_cast<std::size_t>(per_writer));
  std::vector<int> next(static_cast<std::size_t>(writers), 0);
  bool json = std::is_same<SinkType, JsonLogSink>::value;
  for (std::size_t k = first; k < lines.size(); ++k) {
    std::optional<std::string> line = line_field(lines[k], json);
    ASSERT_TRUE(line.has_value()) << "output line " << k << " is cut or merged";
    int w = (*line)[1] - '0';
    ASSERT_TRUE(w >= 0 && w < writers) << "output line " << k;
    int& expected = next[static_cast<std::size_t>(w)];
    ASSERT_EQ(*line, record_line(w, expected)) << "output line " << k << ": writer " << w << " record " << expected;
    ++expected;
  }
}

TEST(LogSinkNonBlocking, TextSinkOnNonBlockingPipeDeliversEveryRecordWholeAndInOrder) {
  check_nonblocking<TextLogSink>(1, 3000, false);
}

TEST(LogSinkNonBlocking, JsonSinkOnNonBlockingPipeDeliversEveryRecordWholeAndInOrder) {
  check_nonblocking<JsonLogSink>(1, 3000, false);
}

TEST(LogSinkNonBlocking, ConcurrentWritersOnNonBlockingPipeNeverInterleave) {
  check_nonblocking<TextLogSink>(4, 800, false);
}

TEST(LogSinkNonBlocking, FileFormOnNonBlockingPipeKeepsHostOrderAndEveryRecord) {
  check_nonblocking<TextLogSink>(1, 1000, true);
  check_nonblocking<JsonLogSink>(2, 500, true);
}

#endif  // !_WIN32

}  // namespace
