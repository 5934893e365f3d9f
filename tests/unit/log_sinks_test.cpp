// TextLogSink and JsonLogSink: the exact output format, to a pipe and a FILE*.
#include <gtest/gtest.h>

#ifndef _WIN32
#include <fcntl.h>
#include <unistd.h>
#endif

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "modkit/modkit.hpp"

namespace {

using namespace modkit;

std::chrono::system_clock::time_point at_ms(long long ms) {
  return std::chrono::system_clock::time_point(std::chrono::milliseconds(ms));
}

LogRecord sample() {
  LogRecord record;
  record.module = "billing";
  record.instance_id = "0190a1b2-c3d4-7e5f-8a6b-1234567890ab";
  record.stream = LogStream::Stdout;
  record.level = LogLevel::Warn;
  record.line = "disk almost full";
  record.timestamp = at_ms(1700000000123LL);  // 2023-11-14T22:13:20.123Z
  return record;
}

#ifndef _WIN32
// Writes records through a sink built on the write end of a pipe, returns
// everything that came out.
template <typename SinkType>
std::string through_pipe(const std::vector<LogRecord>& records) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  {
    SinkType sink(fds[1]);
    for (const auto& record : records) sink.write(record);
  }
  close(fds[1]);
  std::string out;
  char buffer[4096];
  for (;;) {
    ssize_t count = read(fds[0], buffer, sizeof buffer);
    if (count <= 0) break;
    out.append(buffer, static_cast<std::size_t>(count));
  }
  close(fds[0]);
  return out;
}
#endif

template <typename SinkType>
std::string through_file(const std::vector<LogRecord>& records) {
  std::FILE* file = std::tmpfile();
  EXPECT_NE(file, nullptr);
  {
    SinkType sink(file);
    for (const auto& record : records) sink.write(record);
  }
  std::rewind(file);
  std::string out;
  char buffer[4096];
  std::size_t count;
  while ((count = std::fread(buffer, 1, sizeof buffer, file)) > 0) out.append(buffer, count);
  std::fclose(file);
  return out;
}

TEST(TextLogSink, FormatsChildLine) {
  std::string out = through_file<TextLogSink>({sample()});
  EXPECT_EQ(out, "2023-11-14T22:13:20.123Z WARN  billing[567890ab] stdout: disk almost full\n");
}

TEST(TextLogSink, FormatsEveryLevelStreamAndContinuation) {
  std::vector<LogRecord> records;
  LogRecord record = sample();
  record.timestamp = at_ms(0);
  record.level = LogLevel::Error;
  record.stream = LogStream::Stderr;
  records.push_back(record);
  record.level = LogLevel::Trace;
  record.continuation = true;
  record.line = "rest of it";
  records.push_back(record);
  record.continuation = false;
  record.level = LogLevel::Info;
  record.stream = LogStream::Library;
  record.module = "modkit";
  record.instance_id = "";  // library event not tied to one instance
  record.line = "shutting down";
  record.timestamp = at_ms(951782400000LL);  // leap day
  records.push_back(record);
  record.level = LogLevel::Debug;
  record.timestamp = at_ms(4102444799999LL);
  records.push_back(record);
  std::string out = through_file<TextLogSink>(records);
  EXPECT_EQ(out,
            "1970-01-01T00:00:00.000Z ERROR billing[567890ab] stderr: disk almost full\n"
            "1970-01-01T00:00:00.000Z TRACE billing[567890ab] stderr+ rest of it\n"
            "2000-02-29T00:00:00.000Z INFO  modkit modkit: shutting down\n"
            "2099-12-31T23:59:59.999Z DEBUG modkit modkit: shutting down\n");
}

TEST(JsonLogSink, FormatsOneObjectPerLine) {
  std::string out = through_file<JsonLogSink>({sample()});
  EXPECT_EQ(out,
            "{\"timestamp\":\"2023-11-14T22:13:20.123Z\",\"level\":\"warn\",\"module\":\"billing\","
            "\"instance_id\":\"0190a1b2-c3d4-7e5f-8a6b-1234567890ab\",\"stream\":\"stdout\","
            "\"continuation\":false,\"line\":\"disk almost full\"}\n");
}

TEST(JsonLogSink, EscapesStringsAndKeepsUtf8) {
  LogRecord record = sample();
  record.line = "quote \" backslash \\ tab \t cr \r nl \n bell \x07 del \x7f caf\xC3\xA9";
  record.module = "m\"od";
  record.continuation = true;
  record.stream = LogStream::Library;
  record.level = LogLevel::Error;
  std::string out = through_file<JsonLogSink>({record});
  EXPECT_EQ(out,
            "{\"timestamp\":\"2023-11-14T22:13:20.123Z\",\"level\":\"error\",\"module\":\"m\\\"od\","
            "\"instance_id\":\"0190a1b2-c3d4-7e5f-8a6b-1234567890ab\",\"stream\":\"modkit\","
            "\"continuation\":true,\"line\":\"quote \\\" backslash \\\\ tab \\t cr \\r nl \\n bell \\u0007 del "
            "\\u007f caf\xC3\xA9\"}\n");
}

TEST(TextLogSink, EscapesControlsSoOneRecordIsOneLine) {
  LogRecord record = sample();
  // A forged second record, a forged escape, terminal control (CSI as ESC [
  // and as C1 U+009B), NUL, DEL, invalid UTF-8; TAB and other text stay.
  static const char kLine[] =
      "ok\n2023-11-14T22:13:20.123Z ERROR billing[567890ab] stdout: forged \\n cr\r esc\x1b[2J nul\0 del\x7f"
      " csi\xC2\x9B" "31m nel\xC2\x85 tab\t bad\xFF\xC3 caf\xC3\xA9 copy\xC2\xA9 ls\xE2\x80\xA8";
  record.line = std::string_view(kLine, sizeof kLine - 1);
  record.module = "bi\nll\x1b" "ing\\";
  record.instance_id = "x\r\xC2\x9B\x01";
  std::string out = through_file<TextLogSink>({record});
  EXPECT_EQ(out,
            "2023-11-14T22:13:20.123Z WARN  bi\\nll\\u{1b}ing\\\\[x\\r\\u{9b}\\u{01}] stdout: "
            "ok\\n2023-11-14T22:13:20.123Z ERROR billing[567890ab] stdout: forged \\\\n cr\\r esc\\u{1b}[2J "
            "nul\\u{00} del\\u{7f} csi\\u{9b}31m nel\\u{85} tab\t bad\xEF\xBF\xBD\xEF\xBF\xBD caf\xC3\xA9 "
            "copy\xC2\xA9 ls\xE2\x80\xA8\n");
}

TEST(TextLogSink, EscapesEveryControlByteAtEveryWordOffset) {
  // The scan skips clean 8-byte words: put each special byte (and each
  // two-byte C1 control) at every offset around a word boundary.
  std::vector<LogRecord> records;
  std::vector<std::string> lines, expected;
  for (int c = 0; c < 0x20; ++c) {
    if (c == '\t') continue;
    std::string esc = c == '\n' ? "\\n" : c == '\r' ? "\\r" : "";
    if (esc.empty()) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\u{%02x}", c);
      esc = hex;
    }
    for (int at = 0; at < 18; ++at) {
      lines.push_back(std::string(static_cast<std::size_t>(at), 'a') + static_cast<char>(c) + std::string(9, 'b'));
      expected.push_back(std::string(static_cast<std::size_t>(at), 'a') + esc + std::string(9, 'b'));
    }
  }
  for (int at = 0; at < 18; ++at) {
    std::string pad(static_cast<std::size_t>(at), 'a');
    lines.push_back(pad + "\xC2\x9F" + "z\\\x7f\t" + pad);
    expected.push_back(pad + "\\u{9f}z\\\\\\u{7f}\t" + pad);
  }
  for (const auto& line : lines) {
    LogRecord record = sample();
    record.line = line;
    records.push_back(record);
  }
  std::string out = through_file<TextLogSink>(records);
  std::string prefix = "2023-11-14T22:13:20.123Z WARN  billing[567890ab] stdout: ";
  std::string want;
  for (const auto& line : expected) want += prefix + line + "\n";
  EXPECT_EQ(out, want);
}

TEST(JsonLogSink, EscapesC1LineSeparatorsAndRepairsUtf8) {
  LogRecord record = sample();
  record.line = "nel\xC2\x85 csi\xC2\x9B ls\xE2\x80\xA8 ps\xE2\x80\xA9 ok\xE2\x80\xA6\xC2\xA0 bad\xFF\xED\xA0\x80";
  record.module = "m\xC0\xAF";
  record.instance_id = "\xF0\x9F\x98";
  std::string out = through_file<JsonLogSink>({record});
  EXPECT_EQ(out,
            "{\"timestamp\":\"2023-11-14T22:13:20.123Z\",\"level\":\"warn\",\"module\":\"m\xEF\xBF\xBD\xEF\xBF\xBD\","
            "\"instance_id\":\"\xEF\xBF\xBD\",\"stream\":\"stdout\",\"continuation\":false,"
            "\"line\":\"nel\\u0085 csi\\u009b ls\\u2028 ps\\u2029 ok\xE2\x80\xA6\xC2\xA0 bad\xEF\xBF\xBD\xEF\xBF\xBD"
            "\xEF\xBF\xBD\xEF\xBF\xBD\"}\n");
}

#ifndef _WIN32
TEST(TextLogSink, WritesToAFileDescriptor) {
  std::string out = through_pipe<TextLogSink>({sample(), sample()});
  std::string line = "2023-11-14T22:13:20.123Z WARN  billing[567890ab] stdout: disk almost full\n";
  EXPECT_EQ(out, line + line);
}

TEST(JsonLogSink, WritesToAFileDescriptor) {
  std::string out = through_pipe<JsonLogSink>({sample()});
  EXPECT_EQ(out.substr(0, 15), "{\"timestamp\":\"2");
  EXPECT_EQ(out.back(), '\n');
  EXPECT_EQ(out.find('\n'), out.size() - 1);
}

TEST(TextLogSink, ConcurrentWritersNeverInterleaveWithinALine) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::string out;
  std::thread reader([&] {
    char buffer[65536];
    for (;;) {
      ssize_t count = read(fds[0], buffer, sizeof buffer);
      if (count <= 0) break;
      out.append(buffer, static_cast<std::size_t>(count));
    }
  });
  {
    TextLogSink sink(fds[1]);
    std::vector<std::thread> writers;
    for (int t = 0; t < 4; ++t) {
      writers.emplace_back([&sink, t] {
        std::string text(5000, static_cast<char>('a' + t));  // longer than PIPE_BUF
        LogRecord record = sample();
        record.line = text;
        for (int i = 0; i < 50; ++i) sink.write(record);
      });
    }
    for (auto& writer : writers) writer.join();
  }
  close(fds[1]);
  reader.join();
  close(fds[0]);
  std::size_t lines = 0, start = 0;
  for (std::size_t nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1, ++lines) {
    std::string line = out.substr(start, nl - start);
    std::string body = line.substr(line.find("stdout: ") + 8);
    ASSERT_EQ(body.size(), 5000u);
    ASSERT_EQ(body.find_first_not_of(body[0]), std::string::npos) << "interleaved line " << lines;
  }
  EXPECT_EQ(lines, 200u);
}
#endif

}  // namespace
