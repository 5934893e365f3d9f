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
